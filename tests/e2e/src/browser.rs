//! Headless Chromium driving the web client, for the browser tests
//! (`tests/browser.rs`): Debian's `chromium` through its `chromedriver`
//! (both installed by `just test`), spoken to over WebDriver by fantoccini.
//!
//! Every [`Browser`] has a chromedriver of its own on a free port, in a
//! process group of its own that Chromium joins; the group is killed when
//! the browser is dropped, so a test that panics leaves no browser behind.
//! Chromium's profile and chromedriver's log live in the stack's log
//! directory (under /tmp/clusterchat-e2e, wiped by the next `just test`).
//!
//! The page is found by the `data-testid` attributes of web/ (the DOM
//! contract the web client keeps stable). Everything a test waits for is
//! polled with a deadline ([`BROWSER_PATIENCE`]): a JavaScript expression
//! over the page that returns a value once the page shows what is
//! expected, never a fixed sleep. A wait that runs out saves a screenshot
//! and the page's text next to the test's screenshots and says what it
//! last saw.

use std::{path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{
    Client, ClientBuilder, Locator,
    actions::{InputSource, KeyAction, KeyActions},
    elements::Element,
};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::{Stack, free_port, wait_for_port};

/// How long a test waits for the page to show something: longer than
/// [`crate::PATIENCE`], for the roster refresh (every ~15 s) and a 2-core
/// machine running two browsers next to the stack.
pub const BROWSER_PATIENCE: Duration = Duration::from_secs(30);

/// WebDriver key codes (typed with `send_keys` or [`Browser::press`]).
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";
pub const ESCAPE: &str = "\u{E00C}";
pub const SHIFT: &str = "\u{E008}";
/// Releases the modifier keys pressed so far.
pub const RELEASE: &str = "\u{E000}";

/// Helpers every script run by [`Browser::js`] can use: `q(id, root)` and
/// `qa(id, root)` find by `data-testid`, `shown(el)` is true for an element
/// that is laid out and visible, `txt(el)` is its rendered text, `conv(c)`
/// the sidebar item of conversation `c`, `msgs()` the messages of the open
/// conversation.
const PRELUDE: &str = r#"
const q = (id, root) => (root || document).querySelector(`[data-testid="${id}"]`);
const qa = (id, root) => Array.from((root || document).querySelectorAll(`[data-testid="${id}"]`));
const shown = (el) => !!el && el.getClientRects().length > 0
    && getComputedStyle(el).visibility !== 'hidden' && getComputedStyle(el).display !== 'none';
const txt = (el) => el ? (el.innerText || el.textContent || '').trim() : '';
const conv = (c) => qa('conversation').find((el) => el.dataset.conv === c) || null;
const msgs = () => qa('message').map((m) => ({
    mid: m.dataset.mid || null,
    cseq: m.dataset.cseq ? Number(m.dataset.cseq) : null,
    mine: m.dataset.mine === 'true',
    text: txt(q('text', m)),
    sender: txt(q('sender', m)),
    ticks: q('ticks', m) ? (q('ticks', m).dataset.state || null) : null,
}));
"#;

/// One message of the open conversation, as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownMessage {
    pub mid: Option<String>,
    pub cseq: Option<i64>,
    pub mine: bool,
    pub text: String,
    pub sender: String,
    /// `sending`, `sent`, `delivered` or `read` (mine only).
    pub ticks: Option<String>,
}

impl ShownMessage {
    fn from_json(value: &Value) -> Self {
        let string = |key: &str| value[key].as_str().map(str::to_owned);
        Self {
            mid: string("mid"),
            cseq: value["cseq"].as_i64(),
            mine: value["mine"].as_bool().unwrap_or(false),
            text: string("text").unwrap_or_default(),
            sender: string("sender").unwrap_or_default(),
            ticks: string("ticks"),
        }
    }
}

/// The conversation id of a one-to-one chat (`d:LOW:HIGH`).
pub fn direct_conv(a: i64, b: i64) -> String {
    format!("d:{}:{}", a.min(b), a.max(b))
}

/// Where screenshots go: `target/browser-screenshots/<backend>/` (the
/// backend of this run: `single` or `cluster`).
pub fn screenshot_dir() -> PathBuf {
    let backend =
        std::env::var("CLUSTERCHAT_TEST_REDIS_BACKEND").unwrap_or_else(|_| "single".into());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/browser-screenshots")
        .join(backend);
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The web client's address through the stack's nginx (the page's origin,
/// so its WebSocket goes to `ws://{nginx}/ws`).
pub fn page_url(stack: &Stack) -> String {
    assert!(
        crate::web_dist().is_some(),
        "web/dist is missing: build the web client first (cd web && npm ci && npm run build; `just test` does)"
    );
    let nginx = stack.nginx.as_ref().expect("stack built with_nginx");
    format!("http://{}/", nginx.ws)
}

/// The colour scheme the page is told the system prefers
/// (`prefers-color-scheme`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ColorScheme {
    #[default]
    Light,
    Dark,
}

/// How a [`Browser`] looks to the page: a desktop window of 1280x900 by
/// default.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserOptions {
    /// A phone's viewport of this many CSS pixels (width, height) instead
    /// of the desktop window: chromedriver's mobile emulation (a touch
    /// screen, device pixel ratio 1, `<meta name="viewport">` obeyed).
    pub phone: Option<(u32, u32)>,
    /// Light (the default, pinned whatever the machine's theme) or dark.
    pub color_scheme: ColorScheme,
}

/// A headless Chromium with its chromedriver, named for its screenshots.
pub struct Browser {
    name: String,
    client: Option<Client>,
    driver: Child,
    /// chromedriver's process group (its pid), Chromium's too; `None` once
    /// killed.
    group: Option<u32>,
}

impl Browser {
    /// Starts chromedriver on a free port and a Chromium session in it: a
    /// desktop window, light theme.
    pub async fn start(stack: &Stack, name: &str) -> Self {
        Self::start_with(stack, name, BrowserOptions::default()).await
    }

    /// [`Browser::start`] with a phone's viewport and/or the dark theme.
    pub async fn start_with(stack: &Stack, name: &str, options: BrowserOptions) -> Self {
        let dir = PathBuf::from(stack.logs()).join(format!("browser-{name}"));
        std::fs::create_dir_all(&dir).expect("browser dir");
        let port = free_port().await;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Chromium is started by chromedriver and stays in its group:
            // one kill of the group ends them all.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver, installed by `just test`)");
        let group = driver.id();
        let mut browser = Self {
            name: name.to_owned(),
            client: None,
            driver,
            group,
        };
        wait_for_port(port, "chromedriver").await;
        // Blink's preferredColorScheme: 0 is dark, 1 light (what
        // `matchMedia('(prefers-color-scheme: dark)')` answers; the theme
        // test checks that it does).
        let scheme = match options.color_scheme {
            ColorScheme::Dark => 0,
            ColorScheme::Light => 1,
        };
        let mut chrome_options = json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,900",
                "--no-first-run",
                "--lang=en-US",
                format!("--blink-settings=preferredColorScheme={scheme}"),
                format!("--user-data-dir={}", dir.join("profile").display()),
            ],
        });
        if let Some((width, height)) = options.phone {
            chrome_options["mobileEmulation"] = json!({
                "deviceMetrics": {
                    "width": width,
                    "height": height,
                    "pixelRatio": 1,
                    "mobile": true,
                    "touch": true,
                },
            });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), chrome_options);
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .unwrap_or_else(|_| panic!("{name}: Chromium did not start within 60 s"))
        .unwrap_or_else(|e| panic!("{name}: a Chromium session in chromedriver: {e}"));
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("browser session open")
    }

    pub async fn open(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{}: open {url}: {e}", self.name));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) with the
    /// [`PRELUDE`] helpers, and returns what it returned.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client()
            .execute(&format!("{PRELUDE}\n{script}"), args)
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}\n{script}", self.name))
    }

    /// Polls `script` until it returns something other than `null`,
    /// `undefined`, `false`, `0` or `""`, and returns that; fails after
    /// `within`.
    pub async fn wait_within(
        &self,
        within: Duration,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.js(script, args.clone()).await;
            let done = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(_) | Value::Object(_) => true,
            };
            if done {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                self.fail(what).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`Browser::wait_within`] [`BROWSER_PATIENCE`].
    pub async fn wait(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        self.wait_within(BROWSER_PATIENCE, what, script, args).await
    }

    /// Saves a screenshot and the page's text, then panics.
    pub async fn fail(&self, what: &str) -> ! {
        let slug: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(60)
            .collect();
        let shot = self.screenshot(&format!("FAILED-{slug}")).await;
        let page = self
            .client()
            .execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            )
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        panic!(
            "{}: {what}: not seen within the wait (screenshot {}); the page shows:\n{page}",
            self.name,
            shot.display()
        );
    }

    /// Waits until the element `testid` is shown.
    pub async fn wait_shown(&self, testid: &str) {
        self.wait(
            &format!("[data-testid={testid}] shown"),
            "return shown(q(arguments[0]));",
            vec![json!(testid)],
        )
        .await;
    }

    /// The (shown) element `testid`, waited for.
    pub async fn element(&self, testid: &str) -> Element {
        self.wait_shown(testid).await;
        self.client()
            .find(Locator::Css(&format!("[data-testid=\"{testid}\"]")))
            .await
            .unwrap_or_else(|e| panic!("{}: find {testid}: {e}", self.name))
    }

    /// Clears the input `testid` and types `text` into it.
    pub async fn fill(&self, testid: &str, text: &str) {
        let input = self.element(testid).await;
        input
            .clear()
            .await
            .unwrap_or_else(|e| panic!("{}: clear {testid}: {e}", self.name));
        input
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: type into {testid}: {e}", self.name));
    }

    /// Types `keys` (text and key codes) into `testid` as they are.
    pub async fn type_keys(&self, testid: &str, keys: &str) {
        self.element(testid)
            .await
            .send_keys(keys)
            .await
            .unwrap_or_else(|e| panic!("{}: type into {testid}: {e}", self.name));
    }

    /// Presses `keys` (text and key codes, each pressed and released in
    /// turn) on whatever has the focus, as a keyboard does: unlike
    /// [`Browser::type_keys`], nothing is focused first.
    pub async fn press(&self, keys: &str) {
        let mut keyboard = KeyActions::new("keyboard".into());
        for key in keys.chars() {
            keyboard = keyboard
                .then(KeyAction::Down { value: key })
                .then(KeyAction::Up { value: key });
        }
        self.client()
            .perform_actions(keyboard)
            .await
            .unwrap_or_else(|e| panic!("{}: press {keys:?}: {e}", self.name));
    }

    /// Waits until the focused element is `testid`.
    pub async fn wait_focused(&self, testid: &str) {
        self.wait(
            &format!("focus on [data-testid={testid}]"),
            "const el = document.activeElement; \
             return !!el && el.dataset.testid === arguments[0];",
            vec![json!(testid)],
        )
        .await;
    }

    /// Clicks (taps) the first element matching the CSS `selector`.
    pub async fn click_css(&self, selector: &str) {
        self.client()
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{}: find {selector}: {e}", self.name))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {selector}: {e}", self.name));
    }

    pub async fn click(&self, testid: &str) {
        self.element(testid)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {testid}: {e}", self.name));
    }

    /// The visible text of `testid` ("" when absent).
    pub async fn text_of(&self, testid: &str) -> String {
        self.js("return txt(q(arguments[0]));", vec![json!(testid)])
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `testid` is shown with text containing `needle`; returns
    /// the text.
    pub async fn wait_text(&self, testid: &str, needle: &str) -> String {
        self.wait(
            &format!("[data-testid={testid}] showing {needle:?}"),
            "const el = q(arguments[0]); \
             return shown(el) && txt(el).includes(arguments[1]) ? txt(el) : null;",
            vec![json!(testid), json!(needle)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves a PNG of the window as `<screenshot_dir>/<name>-<file>.png`.
    pub async fn screenshot(&self, file: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{}-{file}.png", self.name));
        match self.client().screenshot().await {
            Ok(png) => std::fs::write(&path, png).expect("write screenshot"),
            Err(e) => eprintln!("{}: no screenshot {file}: {e}", self.name),
        }
        path
    }

    /// Registers through the page's form; returns the id the page shows
    /// (`register-result`'s `data-id`).
    pub async fn register(&self, name: &str, password: &str) -> i64 {
        self.fill("register-name", name).await;
        self.fill("register-password", password).await;
        self.click("register-submit").await;
        let id = self
            .wait(
                &format!("register {name}: register-result with data-id"),
                "const el = q('register-result'); \
                 return shown(el) && el.dataset.id ? el.dataset.id : null;",
                vec![],
            )
            .await;
        let id: i64 = id
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("register-result data-id {id} is not an id"));
        let shown = self.text_of("register-result").await;
        assert!(
            shown.contains(&id.to_string()),
            "register-result says {shown:?}, not the id {id}"
        );
        id
    }

    /// Fills and submits the login form (Enter in the password field).
    pub async fn submit_login(&self, id: i64, password: &str) {
        self.fill("login-id", &id.to_string()).await;
        self.fill("login-password", password).await;
        self.type_keys("login-password", ENTER).await;
    }

    /// Logs in through the page and waits for the main screen: `me` with
    /// this id and the connection shown as connected.
    pub async fn login(&self, id: i64, password: &str) {
        self.submit_login(id, password).await;
        self.wait(
            &format!("logged in as {id}"),
            "const me = q('me'); const state = q('connection-state'); \
             return shown(me) && me.dataset.id === String(arguments[0]) \
                 && state && state.dataset.state === 'connected';",
            vec![json!(id)],
        )
        .await;
    }

    /// The `connection-state` (`connected`, `connecting`, `reconnecting`).
    pub async fn connection_state(&self) -> String {
        self.js(
            "const el = q('connection-state'); return el ? el.dataset.state || '' : '';",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until the sidebar has conversation `conv`.
    pub async fn wait_conversation(&self, conv: &str) {
        self.wait(
            &format!("conversation {conv} in the sidebar"),
            "return shown(conv(arguments[0]));",
            vec![json!(conv)],
        )
        .await;
    }

    /// Opens conversation `conv` from the sidebar and waits for its view.
    pub async fn open_conversation(&self, conv: &str) {
        self.wait_conversation(conv).await;
        self.client()
            .find(Locator::Css(&format!(
                "[data-testid=\"conversation\"][data-conv=\"{conv}\"]"
            )))
            .await
            .unwrap_or_else(|e| panic!("{}: find conversation {conv}: {e}", self.name))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click conversation {conv}: {e}", self.name));
        self.wait_shown("conversation-title").await;
        self.wait_shown("composer").await;
    }

    /// The unread badge of conversation `conv`: its text, "" when absent,
    /// hidden or empty.
    pub async fn unread(&self, conv: &str) -> String {
        self.js(
            "const c = conv(arguments[0]); const u = c && q('unread', c); \
             return shown(u) ? txt(u) : '';",
            vec![json!(conv)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until conversation `conv`'s unread badge reads `count` (0: no
    /// badge, or an empty one).
    pub async fn wait_unread(&self, conv: &str, count: u32) {
        let want = if count == 0 {
            String::new()
        } else {
            count.to_string()
        };
        self.wait(
            &format!("unread badge of {conv} reading {want:?}"),
            "const c = conv(arguments[0]); const u = c && q('unread', c); \
             const now = shown(u) ? txt(u) : ''; \
             return c !== null && (now === arguments[1] || (arguments[1] === '' && now === '0'));",
            vec![json!(conv), json!(want)],
        )
        .await;
    }

    /// Types `text` into the composer and sends it with Enter.
    pub async fn send(&self, text: &str) {
        self.type_keys("composer", &format!("{text}{ENTER}")).await;
    }

    /// The messages of the open conversation, in the page's order.
    pub async fn messages(&self) -> Vec<ShownMessage> {
        self.js("return msgs();", vec![])
            .await
            .as_array()
            .map(|list| list.iter().map(ShownMessage::from_json).collect())
            .unwrap_or_default()
    }

    /// Waits until the open conversation shows a message with exactly
    /// `text` (mine or not, as given) and returns it.
    pub async fn wait_message(&self, text: &str, mine: bool) -> ShownMessage {
        let found = self
            .wait(
                &format!("message {text:?} (mine: {mine})"),
                "return msgs().find((m) => m.text === arguments[0] && m.mine === arguments[1]) || null;",
                vec![json!(text), json!(mine)],
            )
            .await;
        ShownMessage::from_json(&found)
    }

    /// Waits until my message `text` shows ticks in state `state` (or a
    /// later one: sent < delivered < read).
    pub async fn wait_ticks(&self, text: &str, state: &str) -> String {
        self.wait(
            &format!("ticks of {text:?} reaching {state}"),
            "const order = ['sending', 'sent', 'delivered', 'read']; \
             const m = msgs().find((m) => m.text === arguments[0] && m.mine); \
             return m && order.indexOf(m.ticks) >= order.indexOf(arguments[1]) ? m.ticks : null;",
            vec![json!(text), json!(state)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Ends the session (Chromium quits), then chromedriver.
    pub async fn quit(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        }
        self.kill_group();
        let _ = self.driver.wait().await;
    }

    fn kill_group(&mut self) {
        if let Some(pid) = self.group.take() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Open client connections of a gateway by transport (`tcp`, `ws`), from
/// its `/metrics`: which node a page's WebSocket is on.
pub async fn gateway_connections(gateway: &crate::Gateway, transport: &str) -> Option<f64> {
    let (status, body) = crate::http_get(gateway.admin, "/metrics").await?;
    if status != 200 {
        return None;
    }
    let label = format!("transport=\"{transport}\"");
    body.lines()
        .filter(|line| line.starts_with("clusterchat_gateway_connections") && line.contains(&label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
        .or(Some(0.0))
}
