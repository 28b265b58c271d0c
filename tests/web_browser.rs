//! The approval inbox in real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver with fantoccini): sign in with a token, open the inbox, open an
//! approval, read the explanation, approve; self-approval refused on the page; a stale approval
//! answered with 409. Screenshots of the inbox and of an approval page are written under
//! `target/screenshots/` on every run.
//!
//! Without chromedriver the tests say so loudly and pass, unless `SALVAGE_REQUIRE_BROWSER` is
//! set (`.ci/run` sets it and installs the packages).

#[path = "common/scratch.rs"]
mod scratch;

#[path = "common/wait.rs"]
mod wait;

#[path = "common/daemon.rs"]
mod daemon;

#[path = "common/approvals.rs"]
mod approvals;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use approvals::{FAILED_INVOICE, ROOT, STEP, STORE, cli_json, token, waiting_execution};
use daemon::Daemon;
use wait::wait_for;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed with the test.
struct Driver {
    child: Child,
    address: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver, or `None` (said loudly) when it is not installed and not required.
fn driver() -> Option<Driver> {
    if !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("SALVAGE_REQUIRE_BROWSER").is_none(),
            "SALVAGE_REQUIRE_BROWSER is set but {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver"
        );
        eprintln!(
            "SKIPPED: browser tests need {CHROMEDRIVER} (apt-get install chromium chromium-driver; .ci/run does)"
        );
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("chromedriver to listen", || TcpStream::connect(address).ok().map(|_| ()));
    Some(Driver { child, address })
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--lang=en-US"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://{}", driver.address))
        .await
        .expect("a Chromium session")
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(ROOT).join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("target/screenshots");
    dir
}

async fn sign_in(client: &Client, base: &str, token: &str) {
    client.goto(&format!("{base}/approvals")).await.expect("open the inbox");
    // Not signed in: the inbox sends the browser to the login page.
    assert!(client.current_url().await.expect("url").path().ends_with("/login"));
    client.find(Locator::Css("#token")).await.expect("token field").send_keys(token).await.expect("type");
    client.find(Locator::Css("#sign-in")).await.expect("sign in").click().await.expect("click");
    client.wait().for_element(Locator::Css("#who")).await.expect("signed in");
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
        .expect(css)
        .text()
        .await
        .expect("text")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn a_person_signs_in_reads_every_explanation_and_approves_in_chromium() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().expect("temp");
    let execution = waiting_execution(dir.path(), None);
    let commander = token(dir.path(), "incident-commander");
    let web = Daemon::start_web(dir.path(), STORE, &[]);
    let base = format!("http://{}", web.web_address());
    runtime().block_on(async {
        let client = browser(&driver).await;
        sign_in(&client, &base, &commander).await;
        assert_eq!(text_of(&client, "#who").await, "incident-commander");
        let row = text_of(&client, "#approvals tbody tr").await;
        assert!(row.contains(FAILED_INVOICE) && row.contains(STEP), "{row}");
        assert!(row.contains("oncall-sre, incident-commander"), "who may approve: {row}");
        client.set_window_size(1280, 420).await.expect("size");
        std::fs::write(screenshot_dir().join("inbox.png"), client.screenshot().await.expect("png")).expect("write");
        client.set_window_size(1280, 1000).await.expect("size");

        client.find(Locator::Css("a.approval")).await.expect("the approval").click().await.expect("open");
        let explanation = text_of(&client, "#explanation").await;
        // Every decision, with the policy file and hook that took it, and the checkpoints.
        for expected in ["classify", "approvers", "policies/approvals.rhai", "on-call recovery"] {
            assert!(explanation.contains(expected), "{expected:?} not in {explanation}");
        }
        let after = text_of(&client, "#after").await;
        assert!(after.contains("partial_replay") || after.contains("branch"), "steps after approval: {after}");
        let incident = text_of(&client, "#incident").await;
        assert!(incident.contains(FAILED_INVOICE) && incident.contains("tool_failure"), "{incident}");
        client.set_window_size(1280, 2300).await.expect("size");
        std::fs::write(screenshot_dir().join("approval.png"), client.screenshot().await.expect("png")).expect("write");
        client.set_window_size(1280, 1000).await.expect("size");

        client
            .find(Locator::Css("#reason"))
            .await
            .expect("reason")
            .send_keys("invoice total checked")
            .await
            .expect("type");
        client.find(Locator::Css("#approve")).await.expect("approve").click().await.expect("click");
        let answered = text_of(&client, "#answered").await;
        assert!(answered.contains("recorded: approved"), "{answered}");
        client.close().await.expect("close");
    });
    let audit = cli_json(dir.path(), &["audit", "--json"]);
    let answer =
        audit.as_array().expect("entries").iter().find(|e| e["event"] == "approval_answered").expect("answered");
    assert_eq!(answer["actor"], "incident-commander");
    assert_eq!(answer["origin"], "web");
    assert_eq!(answer["reason"], "invoice total checked");
    assert_eq!(answer["executionId"], execution.as_str());
    web.stop();
}

#[test]
fn self_approval_and_a_stale_approval_are_refused_on_the_page() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().expect("temp");
    let execution = waiting_execution(dir.path(), None);
    let starter = token(dir.path(), "oncall-sre");
    let commander = token(dir.path(), "incident-commander");
    let web = Daemon::start_web(dir.path(), STORE, &[]);
    let base = format!("http://{}", web.web_address());
    let page = format!("{base}/approvals/{execution}/{STEP}");
    runtime().block_on(async {
        // The person who started the execution may not approve it.
        let client = browser(&driver).await;
        sign_in(&client, &base, &starter).await;
        client.goto(&page).await.expect("open");
        client.find(Locator::Css("#approve")).await.expect("approve").click().await.expect("click");
        let problem = text_of(&client, "#problem").await;
        assert!(problem.contains("403") && problem.contains("oncall-sre started execution"), "{problem}");
        client.close().await.expect("close");

        // The policies change while the page is open: the answer is stale (409), and says why.
        let client = browser(&driver).await;
        sign_in(&client, &base, &commander).await;
        client.goto(&page).await.expect("open");
        client.wait().for_element(Locator::Css("#approve")).await.expect("the form");
        approvals::edit_policies(dir.path(), true);
        client.find(Locator::Css("#approve")).await.expect("approve").click().await.expect("click");
        let problem = text_of(&client, "#problem").await;
        assert!(problem.contains("409") && problem.contains("stale"), "{problem}");
        client.close().await.expect("close");
    });
    // Nothing was approved: the execution still waits.
    assert_eq!(cli_json(dir.path(), &["approvals", "--json"])[0]["executionId"], execution.as_str());
    web.stop();
}

#[test]
fn a_second_approver_completes_a_quorum_in_chromium() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().expect("temp");
    let execution = waiting_execution(dir.path(), Some("{ approvers: [bob, carol, dave], quorum: 2 }"));
    let (bob, carol) = (token(dir.path(), "bob"), token(dir.path(), "carol"));
    let web = Daemon::start_web(dir.path(), STORE, &[]);
    let base = format!("http://{}", web.web_address());
    let page = format!("{base}/approvals/{execution}/{STEP}");
    runtime().block_on(async {
        let client = browser(&driver).await;
        sign_in(&client, &base, &bob).await;
        let row = text_of(&client, "#approvals tbody tr").await;
        assert!(row.contains("(0 of 2 approved)"), "{row}");
        client.goto(&page).await.expect("open");
        assert!(text_of(&client, "#quorum").await.contains("0 of 2 approvals"));
        client.find(Locator::Css("#approve")).await.expect("approve").click().await.expect("click");
        let answered = text_of(&client, "#answered").await;
        assert!(answered.contains("1 of 2 approvals"), "{answered}");
        let quorum = text_of(&client, "#quorum").await;
        assert!(quorum.contains("1 of 2 approvals") && quorum.contains("approved by bob"), "{quorum}");
        client.close().await.expect("close");

        let client = browser(&driver).await;
        sign_in(&client, &base, &carol).await;
        client.goto(&page).await.expect("open");
        client.find(Locator::Css("#approve")).await.expect("approve").click().await.expect("click");
        let answered = text_of(&client, "#answered").await;
        assert!(answered.contains("recorded: approved"), "{answered}");
        client.close().await.expect("close");
    });
    // The quorum is complete: `salvage web` lets the execution go on past the approval.
    wait_for("the execution to go on", || {
        let executions = cli_json(dir.path(), &["executions", "--json"]);
        (executions[0]["status"] != "waiting_for_approval" && executions[0]["status"] != "running").then_some(())
    });
    let audit = cli_json(dir.path(), &["audit", "--json"]);
    let approvals: Vec<&str> = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["event"] == "approval_answered")
        .map(|e| e["actor"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(approvals, ["bob", "carol"]);
    web.stop();
}
