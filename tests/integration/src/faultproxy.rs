//! FaultProxy: a hand-written FAKE of a flaky network/load balancer, ours, on 127.0.0.1
//! in front of the test bed's real OpenStack services. On a share of the calls (seeded,
//! so a run is reproducible) it answers 500 or 429 (`Retry-After: 1`) without
//! forwarding, resets the connection before forwarding, or forwards and then resets (the
//! service did the work but the reply is lost: the case that makes a blind retry of a
//! POST create a second resource), or answers 401 (a token the service refused).
//! Everything else is forwarded verbatim; URLs of the proxied services inside replies
//! (Keystone's catalog) are rewritten to the proxies so every call goes through one.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Http500,
    Http429,
    ResetBefore,
    ResetAfter,
    Http401,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub calls: u64,
    pub faults: BTreeMap<Fault, u64>,
}

pub struct FaultProxy {
    /// upstream base (http://127.0.0.1:PORT) → proxy base.
    pub map: Vec<(String, String)>,
    pub stats: Arc<Mutex<Stats>>,
    /// While set, every call is reset before it is forwarded (the cloud is unreachable).
    pub down: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Shared {
    map: Vec<(String, String)>,
    rate_percent: u64,
    rng: AtomicU64,
    kind: AtomicU64,
    stats: Arc<Mutex<Stats>>,
    down: Arc<AtomicBool>,
    http: reqwest::Client,
}

impl FaultProxy {
    /// One listener per upstream port; `rate_percent` of the calls get a fault.
    pub async fn start(upstream_ports: &[u16], rate_percent: u64, seed: u64) -> FaultProxy {
        let mut listeners = Vec::new();
        let mut map = Vec::new();
        for p in upstream_ports {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
            let port = l.local_addr().unwrap().port();
            map.push((format!("http://127.0.0.1:{p}"), format!("http://127.0.0.1:{port}")));
            listeners.push((l, format!("http://127.0.0.1:{p}")));
        }
        let stats = Arc::new(Mutex::new(Stats::default()));
        let down = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            map: map.clone(),
            rate_percent,
            rng: AtomicU64::new(seed | 1),
            kind: AtomicU64::new(0),
            stats: stats.clone(),
            down: down.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        });
        let mut tasks = Vec::new();
        for (l, upstream) in listeners {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((sock, _)) = l.accept().await else { continue };
                    let shared = shared.clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let _ = serve(sock, &upstream, &shared).await;
                    });
                }
            }));
        }
        FaultProxy {
            map,
            stats,
            down,
            tasks,
        }
    }

    /// The proxy URL standing for an upstream base URL.
    pub fn url_for(&self, upstream: &str) -> String {
        let mut s = upstream.to_string();
        for (u, p) in &self.map {
            s = s.replace(u.as_str(), p.as_str());
        }
        s
    }
}

impl Shared {
    fn roll(&self) -> Option<Fault> {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        if r % 100 >= self.rate_percent {
            return None;
        }
        // Which calls fail is random (seeded); the kinds take turns so every kind shows up.
        let n = self.kind.fetch_add(1, Ordering::Relaxed);
        Some(
            [
                Fault::Http500,
                Fault::Http429,
                Fault::ResetBefore,
                Fault::ResetAfter,
                Fault::Http500,
                Fault::Http401,
            ][n as usize % 6],
        )
    }
}

#[allow(deprecated)] // a zero linger does not block on drop: it sends the RST at once
async fn reset(sock: TcpStream) {
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

async fn serve(mut sock: TcpStream, upstream: &str, sh: &Shared) -> std::io::Result<()> {
    // Read the head.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("GET").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    let mut len = 0usize;
    for l in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; (len - body.len()).min(1 << 20)];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }

    if sh.down.load(Ordering::SeqCst) {
        reset(sock).await;
        return Ok(());
    }
    let fault = sh.roll();
    {
        let mut st = sh.stats.lock().unwrap();
        st.calls += 1;
        if let Some(f) = fault {
            *st.faults.entry(f).or_default() += 1;
        }
    }
    let canned = |status: &str, extra: &str, msg: &str| {
        let b = format!(r#"{{"error": {{"message": "{msg}", "code": 0}}}}"#);
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{b}",
            b.len()
        )
    };
    match fault {
        Some(Fault::Http500) => {
            sock.write_all(canned("500 Internal Server Error", "", "FaultProxy: injected 500").as_bytes())
                .await?;
            return Ok(());
        }
        Some(Fault::Http429) => {
            sock.write_all(
                canned(
                    "429 Too Many Requests",
                    "retry-after: 1\r\n",
                    "FaultProxy: injected 429",
                )
                .as_bytes(),
            )
            .await?;
            return Ok(());
        }
        Some(Fault::Http401) if !path.ends_with("/auth/tokens") => {
            sock.write_all(canned("401 Unauthorized", "", "FaultProxy: injected 401").as_bytes())
                .await?;
            return Ok(());
        }
        Some(Fault::ResetBefore) => {
            reset(sock).await;
            return Ok(());
        }
        _ => {}
    }

    // Forward.
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = sh.http.request(m, format!("{upstream}{path}"));
    for (k, v) in &headers {
        let kl = k.to_ascii_lowercase();
        if !matches!(
            kl.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            req = req.header(k.as_str(), v.as_str());
        }
    }
    let resp = match req.body(body).send().await {
        Ok(r) => r,
        Err(_) => {
            reset(sock).await;
            return Ok(());
        }
    };
    let status = resp.status();
    let rheaders = resp.headers().clone();
    let mut rbody = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    if fault == Some(Fault::ResetAfter) {
        reset(sock).await;
        return Ok(());
    }
    if rheaders
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"))
    {
        let mut s = String::from_utf8_lossy(&rbody).to_string();
        for (u, p) in &sh.map {
            s = s.replace(u.as_str(), p.as_str());
        }
        rbody = s.into_bytes();
    }
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    for (k, v) in &rheaders {
        let k = k.as_str();
        if !matches!(k, "content-length" | "connection" | "transfer-encoding" | "keep-alive") {
            out.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("")));
        }
    }
    out.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", rbody.len()));
    sock.write_all(out.as_bytes()).await?;
    sock.write_all(&rbody).await?;
    sock.shutdown().await?;
    Ok(())
}
