"""isostack"""
