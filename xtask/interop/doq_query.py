"""dnspython's DNS over QUIC client (RFC 9250) against a DoQ server on 127.0.0.1.

usage: doq_query.py PORT CA_PEM NAME/TYPE...

Prints one JSON list: for each query its response code and answer records.
"""
import json
import sys

import dns.message
import dns.query
import dns.rcode


def main() -> None:
    port = int(sys.argv[1])
    ca = sys.argv[2]
    results = []
    for spec in sys.argv[3:]:
        name, rtype = spec.split("/")
        query = dns.message.make_query(name, rtype)
        answer = dns.query.quic(
            query, "127.0.0.1", port=port, timeout=10, verify=ca, server_hostname="localhost"
        )
        results.append(
            {
                "query": spec,
                "id": answer.id,
                "rcode": dns.rcode.to_text(answer.rcode()),
                "answers": sorted(rr.to_text() for rrset in answer.answer for rr in rrset),
            }
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
