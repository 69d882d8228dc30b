"""Each guest's copy of its vhea port's classifier settings, so software in the guest can predict rx queues.

Both `up` and `restart-device-model` write it; a failure is only a warning.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

from rich.console import Console

from testbed import devicemodel
from testbed.ssh import connect, run
from testbed.state import Topology

CLASSIFIER_FILE = "/etc/isostack/classifier.json"


def publish_classifier_settings(topo: Topology, console: Console) -> None:
    """Write each guest's vhea port classifier settings (queues, RSS key, hash types, RETA, rules) to
    /etc/isostack/classifier.json in the guest, so that software there can predict the rx queue of a flow
    (isostack/rss.py). The guest cannot learn them from its NIC: QEMU does not offer VIRTIO_NET_F_RSS over
    vhost-user. Run again after changing rules or RSS with `vhea rule` / `vhea rss` (`testbed up` on a
    running testbed does). A failure is a warning: only queue prediction in the guest needs the file.
    """
    for g in topo.guests:
        try:
            res = subprocess.run(devicemodel.vhea_command() + ["rss", "show", "--socket-dir",
                                                               topo.device_model.socket_dir, "--port", g.port,
                                                               "--json"],
                                 capture_output=True, text=True, timeout=10)
            if res.returncode != 0:
                raise RuntimeError(res.stderr.strip() or f"vhea rss show exited {res.returncode}")
            settings = json.loads(res.stdout)
            for k in ("ok", "counters"):
                settings.pop(k, None)
            ssh = topo.ssh_endpoint(g)
            client = connect(ssh.host, ssh.port, ssh.user, Path(ssh.key))
            try:
                code, _, err = run(client, f"mkdir -p {os.path.dirname(CLASSIFIER_FILE)}", timeout_s=20)
                if code != 0:
                    raise RuntimeError(err.strip())
                with client.open_sftp() as sftp:
                    sftp.putfo(io.BytesIO(json.dumps(settings, indent=1).encode() + b"\n"), CLASSIFIER_FILE + ".tmp")
                    sftp.posix_rename(CLASSIFIER_FILE + ".tmp", CLASSIFIER_FILE)
            finally:
                client.close()
        except Exception as e:  # any failure here is reported, never fatal
            console.print(f"[yellow]warning: could not write {CLASSIFIER_FILE} in {g.name}: {e}[/]")
