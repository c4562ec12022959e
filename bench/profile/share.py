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
they call; quay's code inlined into them stays quay's), and the frees of the field lists quiche's HTTP/3 poll hands over.
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
QUAY_SOURCE = re.compile(r"/crates/(quic-app|quic-io|quic-h3|quic-masque|quic-doq|quay)/")
FIELD_LIST = re.compile(r"^core::ptr::drop_in_place<alloc::vec::Vec<quiche::h3::Header>>$")


def load(path):
    """Self counts per (function, source file of the code), inclusive counts per
    (caller, callee), the total."""
    fn_names, file_names = {}, {}
    selfs, calls = Counter(), Counter()
    total = 0
    fn = callee = None
    fn_file = file = ""
    after_calls = False

    def name(table, v):
        m = re.match(r"\((\d+)\)(?: (.*))?$", v)
        if not m:
            return v
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), v)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("fl="):
                fn_file = file = name(file_names, line[3:])
            elif line.startswith(("fi=", "fe=")):
                file = name(file_names, line[3:])
            elif line.startswith(("cfi=", "cfl=")):
                name(file_names, line[4:])
            elif line.startswith("fn="):
                fn = name(fn_names, line[3:])
                file = fn_file
            elif line.startswith("cfn="):
                callee = name(fn_names, line[4:])
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
                    selfs[(fn, file)] += cost
    return selfs, calls, total


def figures(path):
    selfs, calls, total = load(path)
    inside = sum(v for (f, c), v in calls.items() if QUICHE.match(c or "") and not QUICHE.match(f or ""))
    lists = sum(v for (f, c), v in calls.items() if FIELD_LIST.match(c or "") and not FIELD_LIST.match(f or ""))
    # quay's own code inlined into the handler's functions stays quay's.
    handler = sum(
        v for (f, file), v in selfs.items() if HANDLER.match(f or "") and not QUAY_SOURCE.search(file)
    ) + sum(
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
