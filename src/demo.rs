//! `switchyard demo`: two small upstreams (blue and green) on loopback, a
//! config that splits traffic 90/10 between them, and directions.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head the demo upstreams read.
const MAX_HEAD: usize = 16 * 1024;

/// Starts the demo upstreams, writes the demo config and prints directions;
/// returns the config file to run.
pub fn prepare(listen: SocketAddr) -> anyhow::Result<PathBuf> {
    let (blue, green) = start_upstreams()?;
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", listen.port()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("switchyard.toml");
    let config = format!(
        r#"# Switchyard demo config. Edit the split and save: it reloads live.
[listen]
http = "{listen}"

[server]
grace_period = "2s"

[[routes]]
path = "/"
service = "demo"

[services.demo]
split = {{ blue = 90, green = 10 }}

[services.demo.pools.blue]
backends = ["{blue}"]

[services.demo.pools.green]
backends = ["{green}"]
"#
    );
    std::fs::write(&path, config).with_context(|| format!("cannot write {}", path.display()))?;
    let url = format!("http://{listen}/");
    println!(
        r#"
Switchyard demo
  proxy   {url}
  blue    {blue}  (90% of traffic)
  green   {green}  (10% of traffic)
  config  {config}

See the split (100 requests):
  for i in $(seq 100); do curl -s {url}; done | sort | uniq -c

Shift traffic: edit `split` in the config file, for example to
  split = {{ blue = 50, green = 50 }}
and save; Switchyard reloads it live (or run: kill -HUP {pid}).
Switch to green entirely with {{ blue = 0, green = 100 }}.

Stop with Ctrl-C.
"#,
        config = path.display(),
        pid = std::process::id(),
    );
    Ok(path)
}

/// Binds both upstreams, then serves them from a thread of their own.
fn start_upstreams() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the demo upstreams")?;
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (blue, green) = runtime.block_on(async {
        let blue = TcpListener::bind(loopback).await?;
        let green = TcpListener::bind(loopback).await?;
        Ok::<_, std::io::Error>((blue, green))
    })?;
    let addrs = (blue.local_addr()?, green.local_addr()?);
    std::thread::Builder::new()
        .name("demo upstreams".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::join!(serve(blue, "blue"), serve(green, "green"));
            })
        })
        .context("cannot start the demo upstreams")?;
    Ok(addrs)
}

async fn serve(listener: TcpListener, name: &'static str) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, name));
            }
            Err(e) => {
                tracing::warn!(upstream = name, error = %e, "demo upstream accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers every request on a keep-alive connection with the pool's name.
/// Good enough for GET and HEAD; request bodies are not read.
async fn answer(mut stream: TcpStream, name: &'static str) {
    let body = format!("{name}\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-pool: {name}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::with_capacity(1024);
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            let mut chunk = [0u8; 2048];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head_end);
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
