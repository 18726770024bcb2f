//! A name server for tests (UDP, truncating answers over 512 bytes, and
//! TCP on the same port) answering A and AAAA queries from a zone the test
//! changes, and HTTP upstreams on several loopback addresses that answer
//! with their own address.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Zone: name -> addresses (A and AAAA); names in `silent` get no answer;
/// names in `slow` are answered after the delay.
#[derive(Clone, Default)]
pub struct Zone {
    pub names: Arc<Mutex<HashMap<String, Vec<IpAddr>>>>,
    pub silent: Arc<Mutex<HashSet<String>>>,
    pub slow: Arc<Mutex<HashMap<String, Duration>>>,
    pub udp: Arc<AtomicUsize>,
    pub tcp: Arc<AtomicUsize>,
    pub asked: Arc<Mutex<Vec<(String, Instant)>>>,
    /// While set, every name is answered SERVFAIL.
    pub failing: Arc<AtomicBool>,
}

impl Zone {
    pub fn set(&self, name: &str, addrs: &[IpAddr]) {
        self.names
            .lock()
            .expect("not poisoned")
            .insert(name.into(), addrs.to_vec());
    }
    pub fn asked_for(&self, name: &str) -> Vec<Instant> {
        self.asked
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// Parses the question: (name, qtype, end of question).
fn question(query: &[u8]) -> Option<(String, u16, usize)> {
    if query.len() < 12 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let kind = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    Some((labels.join("."), kind, at + 4))
}

/// The full answer (not truncated).
fn answer(zone: &Zone, query: &[u8]) -> Option<(String, Vec<u8>)> {
    let (name, kind, end) = question(query)?;
    let found = zone.names.lock().expect("not poisoned").get(&name).cloned();
    let (rcode, records): (u8, Vec<IpAddr>) = match found {
        _ if zone.failing.load(Ordering::SeqCst) => (2, Vec::new()),
        None => (3, Vec::new()),
        Some(addrs) => (
            0,
            addrs
                .into_iter()
                .filter(|a| (kind == 1 && a.is_ipv4()) || (kind == 28 && a.is_ipv6()))
                .collect(),
        ),
    };
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    out.push(0x80 | (query[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    for ip in records {
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 0, 0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    Some((name, out))
}

/// A name server on one port, UDP (truncating answers over 512 bytes) and TCP.
pub async fn name_server(zone: Zone) -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("not poisoned");
        let addr = udp.local_addr().expect("not poisoned");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (Arc::new(udp), tcp);
        }
    };
    let addr = udp.local_addr().expect("not poisoned");
    let z = zone.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((len, from)) = udp.recv_from(&mut buf).await else {
                return;
            };
            z.udp.fetch_add(1, Ordering::SeqCst);
            let query = buf[..len].to_vec();
            let z = z.clone();
            let udp = udp.clone();
            tokio::spawn(async move {
                let Some((name, mut out)) = answer(&z, &query) else {
                    return;
                };
                z.asked
                    .lock()
                    .expect("not poisoned")
                    .push((name.clone(), Instant::now()));
                if z.silent.lock().expect("not poisoned").contains(&name) {
                    return;
                }
                let delay = z.slow.lock().expect("not poisoned").get(&name).copied();
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                    // Answer as the zone is now.
                    out = answer(&z, &query).expect("not poisoned").1;
                }
                if out.len() > 512 {
                    let (_, _, end) = question(&query).expect("not poisoned");
                    out.truncate(end);
                    out[2] |= 0x02; // TC
                    out[6] = 0;
                    out[7] = 0;
                }
                let _ = udp.send_to(&out, from).await;
            });
        }
    });
    let z = zone.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            z.tcp.fetch_add(1, Ordering::SeqCst);
            let z = z.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let Some((name, out)) = answer(&z, &query) else {
                        return;
                    };
                    z.asked
                        .lock()
                        .expect("not poisoned")
                        .push((name.clone(), Instant::now()));
                    if z.silent.lock().expect("not poisoned").contains(&name) {
                        continue;
                    }
                    let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&out);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP upstream on `ip:port` answering its own IP.
pub async fn upstream_on(ip: IpAddr, port: u16) -> Option<u16> {
    let listener = TcpListener::bind((ip, port)).await.ok()?;
    let port = listener.local_addr().expect("not poisoned").port();
    let text = ip.to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let text = text.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| {
                    let body = Bytes::from(text.clone());
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Some(port)
}

/// Upstreams on the same port of all `ips`.
pub async fn upstreams_on(ips: &[IpAddr]) -> u16 {
    'port: loop {
        let port = upstream_on(ips[0], 0).await.expect("bind");
        for ip in &ips[1..] {
            if upstream_on(*ip, port).await.is_none() {
                continue 'port;
            }
        }
        return port;
    }
}

pub fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}
