"""python -m lab up|down|status|tls on|off|status|deploy [ANSIBLE ARGS] — the embedded two-host lab (see
docs/ARCHITECTURE.md); `deploy` runs deploy/ansible/site.yml against it again."""
from __future__ import annotations

import argparse
import signal
import sys

from lab import lifecycle
from lab.errors import LabError


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__,
                                     epilog=f"{lifecycle.KEEP_FAILED_ENV}=1 leaves a failed `up` standing for "
                                            "inspection.")
    parser.add_argument("command", choices=("up", "down", "status", "tls", "deploy"))
    parser.add_argument("mode", nargs="?", choices=("on", "off", "status"),
                        help="tls only: require TLS for litellm_user (on, the default of a lab), allow clear "
                             "text and connect the gateway without it (off), or show it (status)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["deploy"]:  # everything after it is ansible-playbook's
        args, extra = argparse.Namespace(command="deploy", mode=None), argv[1:]
    else:
        args, extra = parser.parse_args(argv), []
    if (args.command == "tls") != (args.mode is not None):
        parser.error("on|off|status goes with `tls` only, and `tls` needs one of them")
    try:
        if args.command == "up":
            lifecycle.up()
            return 0
        if args.command == "deploy":
            lifecycle.run_playbook(extra)
            return 0
        if args.command == "down":
            lifecycle.down()
            return 0
        if args.command == "tls":
            if args.mode == "status":
                return lifecycle.tls_status()
            lifecycle.set_tls(args.mode == "on")
            return 0
        return lifecycle.status()
    except LabError as exc:
        print(f"lab {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. a full disk while writing a rootfs: still one line
        print(f"lab {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped `up` still tears its half-built lab down
    sys.exit(main())
