//! A quick measurement of the server session, run by hand (`cargo run --release -p socks5
//! --example relay_bench -- all`): the proxy runs in a child process so that its CPU time and
//! memory can be read from `/proc`.
//!
//! - `throughput`: one stream of 2 GiB to a sink, directly and through the proxy; the proxy's CPU
//!   seconds per GiB.
//! - `idle`: the proxy's RSS growth per established, idle tunnel (5,000 tunnels).
//! - `rate`: new tunnels per second (CONNECT, reply, close) with 64 clients at once, for 3 s.
//!
//! `cargo xtask bench` owns the real benchmarks; this is for tuning the relay.
#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socks5::{Address, ServerOptions, client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map_or("all", String::as_str);
    if mode == "proxy" {
        let buffer_len = args
            .get(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(64 * 1024);
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
            .block_on(proxy(buffer_len));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let buffer_len = args.get(1).cloned().unwrap_or_else(|| "65536".into());
    let (mut child, address) = start_proxy(&buffer_len)?;
    let pid = child.id();
    let result = runtime.block_on(async {
        if matches!(mode, "throughput" | "all") {
            throughput(address, pid).await?;
        }
        if matches!(mode, "idle" | "all") {
            idle(address, pid, 5000).await?;
        }
        if matches!(mode, "rate" | "all") {
            rate(address, pid, 64, Duration::from_secs(3)).await?;
        }
        Result::Ok(())
    });
    child.kill()?;
    child.wait()?;
    result
}

/// The child: a SOCKS5 server on 127.0.0.1:0 that prints its address.
async fn proxy(buffer_len: usize) -> Result {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let options = Arc::new(ServerOptions {
        relay_buffer_len: buffer_len,
        ..ServerOptions::default()
    });
    let stop = CancellationToken::new();
    loop {
        let (stream, peer) = listener.accept().await?;
        let (options, stop) = (Arc::clone(&options), stop.child_token());
        tokio::spawn(async move {
            socks5::serve(stream, peer, &options, stop).await;
        });
    }
}

fn start_proxy(buffer_len: &str) -> Result<(Child, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["proxy", buffer_len])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok((child, line.trim().parse()?))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11).ok_or("utime")?.parse::<f64>()?
        + fields.get(12).ok_or("stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("VmRSS value")?
        .parse()?)
}

async fn sink() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 256 * 1024];
                let mut total = 0_u64;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = stream.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    Ok(address)
}

async fn send(mut stream: TcpStream, total: u64) -> Result<f64> {
    stream.set_nodelay(true)?;
    let chunk = vec![0x5A; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        stream.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    stream.shutdown().await?;
    let received = stream.read_u64().await?;
    let seconds = start.elapsed().as_secs_f64();
    if received != sent {
        return Err(format!("sink got {received} of {sent} bytes").into());
    }
    Ok(sent as f64 / seconds / f64::from(1 << 20))
}

async fn throughput(proxy: SocketAddr, pid: u32) -> Result {
    const TOTAL: u64 = 2 << 30;
    let sink = sink().await?;
    let direct = send(TcpStream::connect(sink).await?, TOTAL).await?;
    let (stream, _) = client::connect(proxy, &Address::Ip(sink), None, TIMEOUT).await?;
    let cpu_before = cpu_seconds(pid)?;
    let proxied = send(stream, TOTAL).await?;
    let cpu = cpu_seconds(pid)? - cpu_before;
    println!(
        "throughput: direct {direct:.0} MiB/s, proxied {proxied:.0} MiB/s ({:.2}x); proxy CPU {:.3} s/GiB",
        proxied / direct,
        cpu / (TOTAL as f64 / f64::from(1 << 30)),
    );
    Ok(())
}

async fn echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    Ok(address)
}

async fn idle(proxy: SocketAddr, pid: u32, count: usize) -> Result {
    let echo = echo().await?;
    // Warm up the allocator and the runtime first, so that the growth below is per tunnel.
    let mut tunnels = Vec::with_capacity(count);
    for _ in 0..100 {
        tunnels.push(open_used_tunnel(proxy, echo).await?);
    }
    let before = rss_kib(pid)?;
    for _ in 100..count {
        tunnels.push(open_used_tunnel(proxy, echo).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    let per_tunnel = (after.saturating_sub(before)) as f64 * 1024.0 / (count - 100) as f64;
    println!(
        "idle: {count} tunnels, proxy RSS {before} -> {after} KiB, {per_tunnel:.0} bytes per tunnel"
    );
    Ok(())
}

/// A tunnel that has relayed a few bytes each way (so its buffers were used and given back).
async fn open_used_tunnel(proxy: SocketAddr, echo: SocketAddr) -> Result<TcpStream> {
    let (mut stream, _) = client::connect(proxy, &Address::Ip(echo), None, TIMEOUT).await?;
    stream.write_all(b"ping").await?;
    let mut back = [0; 4];
    stream.read_exact(&mut back).await?;
    Ok(stream)
}

async fn rate(proxy: SocketAddr, pid: u32, clients: usize, duration: Duration) -> Result {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_seconds(pid)?;
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
        tasks.spawn(async move {
            while Instant::now() < deadline {
                match client::connect(proxy, &Address::Ip(target), None, TIMEOUT).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "rate: {:.0} new tunnels/s with {clients} clients ({failed} failed); proxy CPU {:.1} us per tunnel",
        done as f64 / duration.as_secs_f64(),
        cpu * 1e6 / done as f64,
    );
    Ok(())
}
