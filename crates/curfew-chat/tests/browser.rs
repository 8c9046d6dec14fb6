//! The page at `/` in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), logs in through the dev token endpoint, sends
//! a message with markup in it and sees it come back as text.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`chromedriver` on PATH,
//! or `CHROMEDRIVER`; the browser at `/usr/bin/chromium`, or `CHROMIUM`).
//! Fails, never skips, without them.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};

struct Driver {
    child: Child,
    port: u16,
    profile: std::path::PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn start_driver() -> Driver {
    let driver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile = std::env::temp_dir().join(format!(
        "curfew-chat-chromium-{}-{port}",
        std::process::id()
    ));
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start `{driver}` ({e}): the browser test needs headless Chromium and its driver. \
                 Install them (Debian: apt-get install chromium chromium-driver) or set CHROMEDRIVER."
            )
        });
    let d = Driver {
        child,
        port,
        profile,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_logs_in_sends_and_sees_the_echo() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no browser at {chromium}: the browser test needs headless Chromium. \
         Install it (Debian: apt-get install chromium chromium-driver) or set CHROMIUM."
    );
    let server = common::server(|c| c.dev = true);
    let driver = start_driver();

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", driver.profile.display()),
            ],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("chromedriver starts a Chromium session");

    let result = async {
        let wait = Duration::from_secs(20);
        browser
            .goto(&format!("http://{}/", server.local_addr()))
            .await?;
        browser
            .find(Locator::Css("#user"))
            .await?
            .send_keys("alice")
            .await?;
        browser
            .find(Locator::Css("#connect"))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Css("#status[data-state=open]"))
            .await?;
        let said = "hello from a browser <b>not bold</b>";
        browser
            .find(Locator::Css("#text"))
            .await?
            .send_keys(said)
            .await?;
        browser.find(Locator::Css("#submit")).await?.click().await?;
        let line = browser
            .wait()
            .at_most(wait)
            .for_element(Locator::Css("#log p.message"))
            .await?;
        let text = line.text().await?;
        let bold = browser.find_all(Locator::Css("#log b")).await?;
        Ok::<_, fantoccini::error::CmdError>((text, bold.len()))
    }
    .await;
    let _ = browser.close().await;
    let (text, bold) = result.expect("the page logs in, sends and shows the echo");
    assert_eq!(text, "alice: hello from a browser <b>not bold</b>");
    assert_eq!(bold, 0, "the markup was rendered, not shown as text");
    assert_eq!(server.stats().messages, 1);
}
