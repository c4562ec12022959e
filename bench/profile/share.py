#!/usr/bin/env python3
"""How a server's instructions split between quiche's calls and the rest, per request.

usage: share.py SMALL.out LARGE.out REQUESTS

SMALL.out and LARGE.out are callgrind profiles of the whole server (no toggles)
serving two runs of the same shape that differ by REQUESTS requests (run.sh makes
them). Each figure is (LARGE - SMALL) / REQUESTS, so start-up and handshakes drop out.

Inside quiche's calls is the inclusive count of every call into the quiche functions
quay calls (QUICHE below), made from code outside them; outside is the rest of the
same run. Of what is outside, two parts are named apart: the example application's
handler (h3-server's own closures and quay_examples, with the copies and allocations
they call), and the frees of the field lists quiche's HTTP/3 poll hands over.
"""
import re
import sys
from collections import Counter

QUICHE = re.compile(
    r"^quiche::(Connection<F>::(recv|send_on_path|send|on_timeout)"
    r"|h3::Connection::(poll|send_response|send_additional_headers|do_send_body|recv_body_buf))$"
)
HANDLER = re.compile(r"^(h3_server::|quay_examples::|core::ptr::drop_in_place<quay_examples::)")
COPIES_AND_ALLOCATIONS = re.compile(
    r"(memcpy|memmove|memset|^malloc$|^free$|__rust_alloc|__rust_dealloc|__rdl_alloc|__rdl_dealloc)"
)
FIELD_LIST = re.compile(r"^core::ptr::drop_in_place<alloc::vec::Vec<quiche::h3::Header>>$")


def load(path):
    """Self counts per function, inclusive counts per (caller, callee), the total."""
    names = {}
    selfs, calls = Counter(), Counter()
    total = 0
    fn = callee = None
    after_calls = False

    def name(v):
        m = re.match(r"\((\d+)\)(?: (.*))?$", v)
        if not m:
            return v
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), v)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                callee = name(line[4:])
            elif line.startswith("calls="):
                after_calls = True
            elif line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
            elif line[0].isdigit() or line[0] in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if after_calls:
                    calls[(fn, callee)] += cost
                    after_calls = False
                else:
                    selfs[fn] += cost
    return selfs, calls, total


def figures(path):
    selfs, calls, total = load(path)
    inside = sum(v for (f, c), v in calls.items() if QUICHE.match(c or "") and not QUICHE.match(f or ""))
    lists = sum(v for (f, c), v in calls.items() if FIELD_LIST.match(c or "") and not FIELD_LIST.match(f or ""))
    handler = sum(v for f, v in selfs.items() if HANDLER.match(f or "")) + sum(
        v for (f, c), v in calls.items() if HANDLER.match(f or "") and COPIES_AND_ALLOCATIONS.search(c or "")
    )
    return total, inside, handler, lists


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    small, large, n = figures(sys.argv[1]), figures(sys.argv[2]), int(sys.argv[3])
    total, inside, handler, lists = ((b - a) / n for a, b in zip(small, large))
    outside = total - inside
    own = outside - handler

    def pct(x):
        return f"{x:,.0f} ({x / total * 100:.1f} %)"

    print(f"per request: the whole server {total:,.0f}")
    print(f"  inside quiche's calls          {pct(inside)}")
    print(f"  outside them                   {pct(outside)}")
    print(f"    the example's handler        {handler:,.0f}")
    print(f"    quiche's field lists freed   {lists:,.0f}")
    print(f"  quay's own (outside, less the handler)  {pct(own)}")
    print(f"  less the field lists too       {pct(own - lists)}")


if __name__ == "__main__":
    main()
