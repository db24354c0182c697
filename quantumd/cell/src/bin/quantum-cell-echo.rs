//! quantum-cell-echo: the example pair of channel cells, and the channel
//! benchmark's two ends.
//!
//!   quantum-cell-echo serve CHANNEL          serve CHANNEL, echoing every frame
//!   quantum-cell-echo ping CELL/CHANNEL [N] [SIZE] [--until-closed] [--at UNIX-MS]
//!                                            N round trips of SIZE bytes; prints
//!                                            one JSON line of figures; then, with
//!                                            --until-closed, holds the stream open
//!                                            until it ends (revoked, server gone)
//!   quantum-cell-echo probe CELL/CHANNEL as-is|expired|forged
//!                                            one connect with the cell's token as
//!                                            given, narrowed to an expiry in the
//!                                            past, or forged (its caveats under
//!                                            another key); prints `connected` or
//!                                            `refused: WHY` (the tests' prober)
//!   quantum-cell-echo serve-stdin            echo on the stream socket that is
//!                                            standard input (the raw baseline)
//!   quantum-cell-echo raw [N] [SIZE] [--at UNIX-MS]
//!                                            the same ping over a plain socket
//!                                            pair with a serve-stdin child
//!   quantum-cell-echo raw-serve PATH         echo on a plain Unix socket bound at
//!                                            PATH, no broker (the baseline
//!                                            between two cells)
//!   quantum-cell-echo raw-ping PATH [N] [SIZE] [--at UNIX-MS]
//!                                            the same ping, to a raw-serve cell
//!   (--at: the round trips start at that moment, after the connect)

use std::process::ExitCode;
use std::time::{Duration, Instant};

use quantum_cell::token::{attenuate, caveats, Caveat};
use quantum_cell::{Channels, Stream};

fn echo(mut stream: Stream) {
    let mut buf = Vec::new();
    while let Ok(true) = stream.recv(&mut buf) {
        if stream.send(&buf).is_err() {
            break;
        }
    }
}

fn serve(channel: &str) -> Result<(), String> {
    let channels = Channels::from_env().map_err(|e| e.to_string())?;
    let listener = channels.listen(channel).map_err(|e| format!("listen {channel}: {e}"))?;
    eprintln!("serving {channel}");
    loop {
        let (stream, peer) = listener.accept().map_err(|e| format!("accept on {channel}: {e}"))?;
        eprintln!("{} ({}) connected", peer.instance, peer.cell);
        std::thread::spawn(move || echo(stream));
    }
}

/// What two cells that trust each other could do without quantumd: a
/// Unix socket at a path both can reach, one echo thread per connection.
fn raw_serve(path: &str) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing the old {path}: {e}")),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    eprintln!("serving {path}");
    loop {
        let (socket, _) = listener.accept().map_err(|e| format!("accept on {path}: {e}"))?;
        let stream = Stream::from_unix(socket).map_err(|e| e.to_string())?;
        std::thread::spawn(move || echo(stream));
    }
}

/// Round trips of `size` bytes; JSON figures on stdout.
fn ping_over(stream: &mut Stream, n: usize, size: usize, label: &str) -> Result<(), String> {
    let msg = vec![0x5au8; size];
    let mut back = Vec::new();
    let mut lat = Vec::with_capacity(n);
    let wall = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let start_us = wall(std::time::SystemTime::now());
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        stream.send(&msg).map_err(|e| format!("send {i}: {e}"))?;
        match stream.recv(&mut back) {
            Ok(true) if back == msg => {}
            Ok(true) => return Err(format!("round trip {i}: the echo differs")),
            Ok(false) => return Err(format!("round trip {i}: the stream ended")),
            Err(e) => return Err(format!("round trip {i}: {e}")),
        }
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    let end_us = wall(std::time::SystemTime::now());
    lat.sort();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{{\"path\":\"{label}\",\"round_trips\":{n},\"size\":{size},\"msgs_per_s\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"start_us\":{start_us},\"end_us\":{end_us}}}",
        (2 * n) as f64 / total.as_secs_f64(),
        us(q(0.50)),
        us(q(0.99))
    );
    Ok(())
}

/// The token's caveats, signed with a key that is not the node's: what
/// someone who read a token's format, but not quantumd's key, could make.
fn forge(token: &str) -> Result<String, String> {
    use libmacaroon::{Format, Macaroon, MacaroonKey};
    let key = MacaroonKey::generate(b"a key that is not the node's");
    let mut m = Macaroon::create(Some("quantumd"), &key, "forged").map_err(|e| e.to_string())?;
    for c in caveats(token).map_err(|e| e.to_string())? {
        m.add_first_party_caveat(c).map_err(|e| e.to_string())?;
    }
    m.serialize(Format::V2).map_err(|e| e.to_string())
}

/// `--at UNIX-MS` taken out of `args`: when the round trips start (the
/// benchmark starts hundreds of pairs at one moment, so that they really
/// run at once rather than as they were launched).
fn start_at(args: &mut Vec<String>) -> Result<Option<u128>, String> {
    let Some(i) = args.iter().position(|a| a == "--at") else {
        return Ok(None);
    };
    let value = args.get(i + 1).ok_or("--at: which time (milliseconds since 1970)?")?;
    let ms = value.parse().map_err(|_| format!("--at: not a time in milliseconds: {value}"))?;
    args.drain(i..=i + 1);
    Ok(Some(ms))
}

fn wait_until(at: Option<u128>) {
    let Some(at) = at else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    if at > now {
        std::thread::sleep(Duration::from_millis((at - now) as u64));
    }
}

fn arg(args: &[String], i: usize, default: usize) -> Result<usize, String> {
    args.get(i)
        .map_or(Ok(default), |s| s.parse().map_err(|_| format!("not a number: {s}")))
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("serve") => serve(args.get(1).ok_or("serve: which channel?")?),
        Some("ping") => {
            let channel = args.get(1).ok_or("ping: which CELL/CHANNEL?")?;
            let until_closed = args.iter().any(|a| a == "--until-closed");
            let mut args: Vec<String> = args.iter().filter(|a| *a != "--until-closed").cloned().collect();
            let at = start_at(&mut args)?;
            let (n, size) = (arg(&args, 2, 1000)?, arg(&args, 3, 64)?);
            let channels = Channels::from_env().map_err(|e| e.to_string())?;
            // The server may still be starting: a refusal for want of a
            // listener is retried for a while, any other is final.
            let deadline = Instant::now() + Duration::from_secs(30);
            let (stream, peer) = loop {
                match channels.connect(channel) {
                    Ok(c) => break c,
                    Err(quantum_cell::Error::Refused(r)) if r.contains("no instance") && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => return Err(format!("connect {channel}: {e}")),
                }
            };
            eprintln!("connected to {} ({})", peer.instance, peer.cell);
            let mut stream = stream;
            wait_until(at);
            ping_over(&mut stream, n, size, "channel")?;
            if until_closed {
                // Hold the stream, idle (no CPU: hundreds of these run at
                // once in the VM tier), until it ends: revoked, or the
                // server's instance gone. The server sends nothing
                // unasked, so the first thing read is the end.
                let mut back = Vec::new();
                while matches!(stream.recv(&mut back), Ok(true)) {}
                eprintln!("the stream to {} was closed", peer.instance);
            }
            Ok(())
        }
        Some("probe") => {
            let channel = args.get(1).ok_or("probe: which CELL/CHANNEL?")?;
            let channels = Channels::from_env().map_err(|e| e.to_string())?;
            let token = match args.get(2).map_or("as-is", String::as_str) {
                "as-is" => channels.token().to_owned(),
                "expired" => attenuate(channels.token(), &Caveat::Expires(1)).map_err(|e| e.to_string())?,
                "forged" => forge(channels.token())?,
                other => return Err(format!("probe: unknown way {other:?} (as-is, expired, forged)")),
            };
            match channels.with_token(token).connect(channel) {
                Ok(_) => println!("connected"),
                Err(quantum_cell::Error::Refused(why)) => println!("refused: {why}"),
                Err(e) => return Err(format!("probe {channel}: {e}")),
            }
            Ok(())
        }
        Some("serve-stdin") => {
            // SAFETY: fd 0 is the socket the parent passed and nothing else
            // in this process uses standard input.
            let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(0) };
            echo(Stream::from_unix(std::os::unix::net::UnixStream::from(fd)).map_err(|e| e.to_string())?);
            Ok(())
        }
        Some("raw") => {
            let mut args = args.to_vec();
            let at = start_at(&mut args)?;
            let (n, size) = (arg(&args, 1, 1000)?, arg(&args, 2, 64)?);
            let (mine, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut child = std::process::Command::new(exe)
                .arg("serve-stdin")
                .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .spawn()
                .map_err(|e| format!("starting the raw echo: {e}"))?;
            wait_until(at);
            let result = ping_over(&mut Stream::from_unix(mine).map_err(|e| e.to_string())?, n, size, "raw");
            let _ = child.wait();
            result
        }
        Some("raw-serve") => raw_serve(args.get(1).ok_or("raw-serve: which socket path?")?),
        Some("raw-ping") => {
            let mut args = args.to_vec();
            let at = start_at(&mut args)?;
            let path = args.get(1).ok_or("raw-ping: which socket path?")?;
            let (n, size) = (arg(&args, 2, 1000)?, arg(&args, 3, 64)?);
            // The server cell may still be binding its socket.
            let deadline = Instant::now() + Duration::from_secs(30);
            let socket = loop {
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline && matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    Err(e) => return Err(format!("connect {path}: {e}")),
                }
            };
            wait_until(at);
            ping_over(&mut Stream::from_unix(socket).map_err(|e| e.to_string())?, n, size, "raw-cells")
        }
        _ => Err("usage: quantum-cell-echo serve CHANNEL | ping CELL/CHANNEL [N] [SIZE] [--until-closed] | probe CELL/CHANNEL as-is|expired|forged | raw [N] [SIZE] | raw-serve PATH | raw-ping PATH [N] [SIZE]".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quantum-cell-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
