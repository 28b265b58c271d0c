//! A local HTTP receiver on 127.0.0.1:0 that records every request (method, path, headers,
//! body) and answers each path from a script of statuses (then 200), for tests of what salvage
//! sends out (notifications).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<HashMap<String, VecDeque<u16>>>,
}

pub struct Receiver {
    pub base_url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Serves on its own thread and runtime, so blocking and async tests can use it alike.
    /// `script`: path → the statuses of its first requests, in order (200 after them).
    pub fn start(script: &[(&str, &[u16])]) -> Receiver {
        let shared = Arc::new(Shared::default());
        {
            let mut answers = shared.script.lock().expect("script");
            for (path, statuses) in script {
                answers.insert((*path).to_owned(), statuses.iter().copied().collect());
            }
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app_shared = shared.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let app =
                    axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                        let shared = app_shared.clone();
                        async move {
                            let path = uri.path().to_owned();
                            let headers = headers
                                .iter()
                                .map(|(name, value)| {
                                    (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned())
                                })
                                .collect();
                            let status =
                                shared.script.lock().expect("script").get_mut(&path).and_then(VecDeque::pop_front);
                            shared.requests.lock().expect("requests").push(Recorded {
                                method: method.to_string(),
                                path,
                                headers,
                                body: body.to_vec(),
                            });
                            let status = StatusCode::from_u16(status.unwrap_or(200)).expect("status");
                            (status, format!("answered {}", status.as_u16()))
                        }
                    });
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Receiver { base_url: format!("http://{address}"), shared, stop: Some(stop), thread: Some(thread) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests").clone()
    }

    /// The requests made to `path`, in order.
    pub fn to(&self, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    /// Waits (up to 30 s) until `count` requests arrived.
    pub fn wait_for(&self, count: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let requests = self.requests();
            if requests.len() >= count || Instant::now() > deadline {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
