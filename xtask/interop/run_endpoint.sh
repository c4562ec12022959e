#!/bin/bash
# Entry point of quay's image for the QUIC Interop Runner (quic-network-simulator).
set -e

# Routes and interfaces of the simulator's endpoint image.
/setup.sh

if [ "$ROLE" == "client" ]; then
    # Wait for the simulator before sending the first packet.
    /wait-for-it.sh sim:57832 -s -t 30
fi

# The endpoint reads ROLE, TESTCASE, REQUESTS, SSLKEYLOGFILE and QLOGDIR itself, and
# exits 127 for a case it does not support.
exec /usr/local/bin/interop-endpoint
