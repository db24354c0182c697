//! Real providers on 127.0.0.1 for the tests: a bundle tree in a temporary
//! directory served by the real server on an ephemeral port.

#![allow(dead_code)] // Each test crate uses a different part of this.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quantum_provider::server;
use quantum_provider::store::BundleStore;
use tokio::sync::oneshot;

/// A bundle tree `ROOT/NAME/VERSION.qcb` in a temporary directory.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a bundle and returns its blake3.
    pub fn put(&self, name: &str, version: &str, bytes: &[u8]) -> blake3::Hash {
        let dir = self.root().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{version}.qcb")), bytes).unwrap();
        blake3::hash(bytes)
    }

    pub fn path(&self, name: &str, version: &str) -> PathBuf {
        self.root().join(name).join(format!("{version}.qcb"))
    }
}

/// The provider's server on an ephemeral loopback port, stopped on drop.
pub struct Provider {
    pub addr: SocketAddr,
    pub store: Arc<BundleStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Provider {
    pub async fn start(root: &Path) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let store = Arc::new(BundleStore::new(root));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(listener, store.clone(), async {
            let _ = stopped.await;
        }));
        Provider {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops the server and waits until its port is closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A loopback address nothing listens on: bound, then closed.
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/")
}

/// An HTTP client that shows redirects instead of following them.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends a GET for `target` exactly as written (no URL normalisation, unlike
/// any HTTP client library) and returns the status code and body.
pub async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The body of `response` as JSON.
pub async fn json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> T {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}
