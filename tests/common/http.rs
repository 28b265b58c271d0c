//! A small HTTP client for tests of the API and the inbox (reqwest, plain HTTP on 127.0.0.1).

#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::Value;

/// A response as a test looks at it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub set_cookies: Vec<String>,
    pub location: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    /// A `name=value` cookie the response sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies.iter().find_map(|cookie| {
            let pair = cookie.split(';').next()?;
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
    }

    /// The value of a hidden form field (`name="NAME" value="…"`) on a page.
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let rest = self.body.split(&marker).nth(1)?;
        Some(rest.split('"').next()?.replace("&amp;", "&"))
    }
}

pub struct Http {
    client: reqwest::Client,
    base: String,
    runtime: tokio::runtime::Runtime,
}

impl Http {
    pub fn new(address: SocketAddr) -> Http {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("an HTTP client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Http { client, base: format!("http://{address}"), runtime }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with `headers`; `body`: (content type, bytes).
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<(&str, String)>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        self.runtime.block_on(async {
            let response = request.send().await.expect("the request");
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let status = response.status().as_u16();
            let content_type = header("content-type").unwrap_or_default();
            let location = header("location");
            let set_cookies = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            let body = response.text().await.expect("the body");
            Reply { status, content_type, set_cookies, location, body }
        })
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send("GET", path, headers, None)
    }

    pub fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        self.send("POST", path, headers, Some(("application/json", body.to_string())))
    }

    pub fn post_form(&self, path: &str, headers: &[(&str, &str)], fields: &[(&str, &str)]) -> Reply {
        let body = fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&");
        self.send("POST", path, headers, Some(("application/x-www-form-urlencoded", body)))
    }

    /// Signs in to the inbox with `token`: the session cookie header to send afterwards.
    pub fn sign_in(&self, token: &str) -> String {
        let page = self.get("/login", &[]);
        let csrf = page.field("csrf").expect("the login form's csrf");
        let login_cookie = page.cookie("salvage_login").expect("the login cookie");
        let cookie = format!("salvage_login={login_cookie}");
        let signed = self.post_form("/login", &[("cookie", &cookie)], &[("token", token), ("csrf", &csrf)]);
        assert_eq!(signed.status, 303, "sign in: {}", signed.body);
        format!("salvage_session={}", signed.cookie("salvage_session").expect("a session cookie"))
    }
}

/// application/x-www-form-urlencoded.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            b => format!("%{b:02X}"),
        })
        .collect()
}
