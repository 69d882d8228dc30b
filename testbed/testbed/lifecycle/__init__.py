"""The testbed's lifecycle: `testbed up`, `down`, `status` and `restart-device-model`, one module each.

    up                    up: device model, guest disks, domains under the supervisor, readiness
    restart               restart_device_model: a new `vhea serve` the guests' QEMUs reconnect to
    status                status and healthy: what runs, asked of the supervisor and the device model
    down                  down and the leftovers of an interrupted `up`, found by pid files and sockets
    options               UpOptions: what `testbed up` is asked for, checked, and its reuse fingerprint
    classifier_settings   each guest's copy of its port's RSS and rule settings
"""
