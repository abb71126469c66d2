"""Run nova-conductor or nova-scheduler in one process (memory: the test bed's budget).

With workers=1 oslo.service still forks a worker under a master process, which doubles
the RSS; nova-compute already runs with no_fork=True, this does the same for the others.
Usage: python nova_nofork.py conductor|scheduler --config-file ...
"""
import sys

from nova import monkey_patch
monkey_patch.patch(backend="threading")

import nova.service  # noqa: E402

_serve = nova.service.serve


def _serve_in_process(server, workers=None, no_fork=False):
    return _serve(server, workers=1, no_fork=True)


nova.service.serve = _serve_in_process

if __name__ == "__main__":
    which = sys.argv.pop(1)
    if which == "conductor":
        from nova.cmd import conductor as cmd
    elif which == "scheduler":
        from nova.cmd import scheduler as cmd
    else:
        sys.exit(__doc__)
    sys.argv[0] = "nova-" + which
    sys.exit(cmd.main())
