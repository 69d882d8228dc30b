"""vhea"""
