#!/usr/bin/env bash
# The unit tests of the framework crates Switchyard carries in vendor/
# (pingora-http, pingora-core, pingora-proxy, and the allocator binding
# mimalloc), each against the other vendored crates, with its own
# committed lockfile. Called by test.sh.
#
# Skipped: the tests that dial hosts on the internet or unroutable
# addresses, read pingora's own test keys (not carried here), or need a
# kernel's receive timestamps; nothing else.
set -euo pipefail
cd "$(dirname "$0")/../vendor"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}/framework"
patch=(
    --config 'patch.crates-io.rustls.path="../rustls"'
    --config 'patch.crates-io.pingora-http.path="../pingora-http"'
    --config 'patch.crates-io.pingora-core.path="../pingora-core"'
)
unavailable=(
    connectors::http::tests::test_connect_h1
    connectors::http::tests::test_connect_h2
    connectors::http::tests::test_connect_h2_fallback_h1_reuse
    connectors::http::tests::test_connect_prefer_h1
    connectors::http::tests::test_custom_client_custom_upstream
    connectors::http::tests::test_custom_client_non_custom_upstream
    connectors::http::v1::tests::test_connect
    connectors::http::v1::tests::test_connect_tls
    connectors::http::v1::tests::test_reuse_rejects_fd_mismatch
    connectors::http::v2::tests::test_connect_h1
    connectors::http::v2::tests::test_connect_h2
    connectors::http::v2::tests::test_h2_multiple_stream
    connectors::http::v2::tests::test_h2_reuse_rejects_fd_mismatch
    connectors::http::v2::tests::test_h2_single_stream
    connectors::l4::tests::test_conn_error_addr_not_avail
    connectors::l4::tests::test_conn_timeout
    connectors::tests::test_conn_timeout
    connectors::tests::test_conn_timeout_with_offload
    connectors::tests::test_connect_tls
    connectors::tests::test_do_connect_with_total_timeout
    connectors::tests::test_tls_connect_timeout_supersedes_total
    listeners::test::test_listen_tls
    listeners::test::test_listen_tls_with_offload
    listeners::tls::rustls::tests::test_from_server_config_handshake
    protocols::l4::stream::tests::test_rx_timestamp
    protocols::tls::rustls::server::tests::test_handshake_complete_callback
)
skips=()
for name in "${unavailable[@]}"; do
    skips+=(--skip "$name")
done
(cd pingora-http && cargo test --locked --lib)
(cd pingora-core && cargo test --locked "${patch[@]:0:4}" --features rustls --lib -- --exact "${skips[@]}")
(cd pingora-proxy && cargo test --locked "${patch[@]}" --lib)
(cd mimalloc && cargo test --locked --lib)
