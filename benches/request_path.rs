//! The per-request decisions, measured alone.
//!
//! Purpose: show that route lookup does not grow with the number of routes
//! (hash lookup by host, not a scan), and what the pool pick and header
//! rewrite cost each request. Run with `cargo bench --bench request_path`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;

use switchyard_config::Config;
use switchyard_proxy::headers::{forwarded_for, hop_by_hop_names, request_host};
use switchyard_proxy::{CaBundles, HealthRegistry, Snapshot};

/// A config with `hosts` exact hosts (two paths each), one wildcard and a
/// catch-all, all pointing at a handful of services.
fn config_with_hosts(hosts: usize) -> Config {
    let mut text = String::from("[listen]\nhttp = \"127.0.0.1:8080\"\n");
    for i in 0..hosts {
        text.push_str(&format!(
            "[[routes]]\nhost = \"host{i}.example.com\"\nservice = \"s{}\"\n\
             [[routes]]\nhost = \"host{i}.example.com\"\npath = \"/api\"\nservice = \"s{}\"\n",
            i % 8,
            (i + 1) % 8
        ));
    }
    text.push_str("[[routes]]\nhost = \"*.wild.example.org\"\nservice = \"s0\"\n");
    text.push_str("[[routes]]\nservice = \"s1\"\n");
    for s in 0..8 {
        text.push_str(&format!(
            "[services.s{s}]\nsplit = {{ blue = 90, green = 10 }}\n\
             [services.s{s}.pools.blue]\nbackends = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n\
             [services.s{s}.pools.green]\nbackends = [\"127.0.0.1:{}\"]\n",
            9000 + s * 3,
            9001 + s * 3,
            9002 + s * 3
        ));
    }
    Config::parse(&text, "bench.toml").expect("bench config is valid")
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for hosts in [10usize, 1_000, 10_000] {
        let snapshot = Snapshot::build(
            &config_with_hosts(hosts),
            1,
            &CaBundles::new(),
            &HealthRegistry::default(),
        );
        let names: Vec<String> = (0..64)
            .map(|i| format!("host{}.example.com", (i * 7919) % hosts))
            .collect();
        group.bench_with_input(BenchmarkId::new("exact_host", hosts), &names, |b, names| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % names.len();
                black_box(snapshot.router.route(black_box(&names[i]), "/api/users"))
            })
        });
        group.bench_with_input(BenchmarkId::new("wildcard_host", hosts), &(), |b, _| {
            b.iter(|| {
                black_box(
                    snapshot
                        .router
                        .route(black_box("a.b.wild.example.org"), "/"),
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("catch_all", hosts), &(), |b, _| {
            b.iter(|| {
                black_box(
                    snapshot
                        .router
                        .route(black_box("unknown.example.net"), "/x"),
                )
            })
        });
    }
    group.finish();
}

fn pool_pick(c: &mut Criterion) {
    let snapshot = Snapshot::build(
        &config_with_hosts(10),
        1,
        &CaBundles::new(),
        &HealthRegistry::default(),
    );
    let service = &snapshot.services[0];
    c.bench_function("pool_pick/weighted_pool_and_backend", |b| {
        b.iter(|| {
            let pool = service.pick_pool();
            black_box(service.next_backend(black_box(pool), &[]))
        })
    });
}

fn header_rewrite(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "Shop.Example.com:8080"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
        ("accept-encoding", "gzip, br"),
        ("cookie", "session=abc123; theme=dark"),
        ("x-forwarded-for", "203.0.113.9"),
        ("connection", "keep-alive"),
    ] {
        headers.insert(
            HeaderName::from_static(k),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    let uri: hyper::Uri = "/api/users?id=7".parse().expect("uri");
    c.bench_function("header_rewrite/host_hop_by_hop_xff", |b| {
        b.iter(|| {
            let host = request_host(black_box(&uri), black_box(&headers));
            let names = hop_by_hop_names(black_box(&headers), false);
            let xff = forwarded_for(black_box(&headers), "127.0.0.1");
            black_box((host, names, xff))
        })
    });
}

criterion_group!(benches, route_lookup, pool_pick, header_rewrite);
criterion_main!(benches);
