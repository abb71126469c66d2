//! A plain TCP proxy on 127.0.0.1 that a test can take down (every open connection is
//! cut, new ones are reset: the peer is unreachable) and bring up again, optionally
//! slowing each connection to a rate (so a test can act while a copy is under way).
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct TcpProxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    /// Bumped by every `set_down(true)`: connections of an older epoch end.
    epoch: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpProxy {
    /// Forward 127.0.0.1:<new port> to `upstream`; `rate` bytes/s per direction and
    /// connection (0: unlimited).
    pub async fn start(upstream: &str, rate: u64) -> TcpProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = l.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (d, e, up) = (down.clone(), epoch.clone(), upstream.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = l.accept().await else { continue };
                if d.load(Ordering::SeqCst) {
                    reset(sock);
                    continue;
                }
                let (d, e, up) = (d.clone(), e.clone(), up.clone());
                let mine = e.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(out) = TcpStream::connect(&up).await else { return };
                    let (ri, wi) = sock.into_split();
                    let (ro, wo) = out.into_split();
                    let alive = || !d.load(Ordering::SeqCst) && e.load(Ordering::SeqCst) == mine;
                    tokio::select! {
                        _ = pump(ri, wo, rate, &alive) => {}
                        _ = pump(ro, wi, rate, &alive) => {}
                    }
                });
            }
        });
        TcpProxy {
            port,
            down,
            epoch,
            task,
        }
    }

    pub fn set_down(&self, down: bool) {
        if down {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.down.store(down, Ordering::SeqCst);
    }
}

#[allow(deprecated)] // a zero linger sends the RST at once
fn reset(sock: TcpStream) {
    let _ = sock.set_linger(Some(Duration::ZERO));
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: u64,
    alive: &impl Fn() -> bool,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(200), from.read(&mut buf)).await {
            Err(_) if alive() => continue,
            Ok(Ok(n)) if n > 0 && alive() => n,
            _ => return,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
}
