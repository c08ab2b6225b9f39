"""flash-inspect: what a bundle holds, and whether its files still match their hashes."""

from __future__ import annotations

import json
import sys

from .common import make_parser, run

PROG = "flash-inspect"


def parser():
    p = make_parser(PROG, "Show what a bundle holds: components, sizes, sampler, parity results, warnings; "
                          "verify its files.", "flash-inspect bundles/tiny")
    p.add_argument("bundle", help="bundle directory written by flash-export")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    def body():
        from ..inspection import describe, render

        d = describe(args.bundle, verify=not args.no_verify)
        print(json.dumps(d, indent=1) if args.json else render(d))

    return run(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
