//! The web client in a real browser: headless Chromium (Debian's, through
//! chromedriver) loads the page from the stack's nginx, as a person opens
//! http://127.0.0.1:8080/, and uses it by the page's `data-testid`
//! elements: register, log in, befriend, chat one-to-one and in a group
//! with a user on a terminal (raw TCP), unread badges, read ticks, typing
//! and a second device, a gateway killed under the page, history scrolled
//! back through 300 messages, the server's errors on the screen, a
//! phone-sized screen, the dark theme and the keyboard alone, presence,
//! staying signed in, notifications, a conversation's details, and search.
//!
//! Screenshots of the main screens are saved under
//! target/browser-screenshots/<backend>/ (and of any screen a wait gave
//! up on, as FAILED-*.png).

use std::time::Duration;

use e2e::{
    Client, RECV_TIMEOUT, Stack,
    browser::{
        BROWSER_PATIENCE, Browser, BrowserOptions, ColorScheme, ENTER, ESCAPE, RELEASE, SHIFT,
        ShownMessage, TAB, direct_conv, gateway_connections, page_url,
    },
    chat, group_chat,
};
use serde_json::{Value, json};
use test_support::TcpProxy;

/// A user made over raw TCP (faster than the page, for the tests that are
/// not about registering): registered, nothing else.
async fn register_on_terminal(stack: &Stack, name: &str, password: &str) -> i64 {
    let mut client = Client::connect(stack.gateways[0].tcp).await;
    client.register(name, password).await
}

/// `a` and `b` become friends, set up over raw TCP on a device login (which
/// does not hold the account against the browser's).
async fn befriend_on_terminal(stack: &Stack, a: i64, a_password: &str, b: i64) {
    let mut client = Client::connect(stack.gateways[0].tcp).await;
    let ack = client.login_acking(a, a_password, None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let reply = client
        .call(json!({"msgid": 7, "id": a, "friendid": b}), 1)
        .await;
    assert_eq!(reply["errno"], 0, "add friend: {reply}");
}

/// Reads frames until a chat (msgid `kind`) with text `text` arrives.
async fn recv_chat(client: &mut Client, kind: i64, text: &str) -> Value {
    let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = client
            .try_recv_line(left.min(RECV_TIMEOUT))
            .await
            .unwrap_or_else(|| panic!("no chat {text:?} reached the terminal"));
        let frame: Value = serde_json::from_str(&line).expect("json");
        if frame["msgid"] == kind && frame["msg"] == text {
            return frame;
        }
    }
}

/// Sends a chat from a terminal (the next `seq`), checks it was accepted
/// and notes its text as expected next.
async fn say(client: &mut Client, seq: &mut i64, chat: Value, expected: &mut Vec<String>) {
    *seq += 1;
    let text = chat["msg"].as_str().expect("msg").to_owned();
    let reply = client.call(chat, *seq).await;
    assert_eq!(reply["errno"], 0, "{text}: {reply}");
    expected.push(text);
}

fn assert_once_in_order(shown: &[ShownMessage], expected: &[String]) {
    let mut mids: Vec<_> = shown.iter().map(|m| m.mid.clone()).collect();
    assert!(
        mids.iter().all(Option::is_some),
        "a message without data-mid: {shown:#?}"
    );
    mids.sort();
    mids.dedup();
    assert_eq!(
        mids.len(),
        shown.len(),
        "a message is shown twice: {shown:#?}"
    );
    let texts: Vec<_> = shown.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, expected, "the messages shown, in order");
    let cseqs: Vec<_> = shown.iter().map(|m| m.cseq).collect();
    assert!(
        cseqs
            .windows(2)
            .all(|w| matches!((w[0], w[1]), (Some(a), Some(b)) if a < b)),
        "data-cseq not ascending: {cseqs:?}"
    );
}

/// Two people in browsers and one on a terminal: register and log in
/// through the page, befriend by id, chat both ways (Enter sends,
/// Shift+Enter breaks the line), a group created by one and joined by the
/// other, and the terminal user in both kinds of conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_a_terminal_chat_one_to_one_and_in_a_group() {
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let (alice, bob) = tokio::join!(
        Browser::start(&stack, "alice"),
        Browser::start(&stack, "bob")
    );
    tokio::join!(alice.open(&url), bob.open(&url));
    alice.wait_shown("login-id").await;
    alice.wait_shown("register-name").await;
    alice.screenshot("login").await;

    let a = alice.register("alice", "alice-pw").await;
    let b = bob.register("bob", "bob-pw").await;
    assert_ne!(a, b);
    alice.login(a, "alice-pw").await;
    bob.login(b, "bob-pw").await;
    assert!(alice.text_of("me").await.contains("alice"));

    // Alice adds Bob by his id; both sidebars get the conversation.
    let ab = direct_conv(a, b);
    alice.fill("add-friend-id", &b.to_string()).await;
    alice.click("add-friend-submit").await;
    alice.open_conversation(&ab).await;
    alice.wait_text("conversation-title", "bob").await;
    alice.send("hello bob").await;
    alice.wait_message("hello bob", true).await;
    alice.wait_ticks("hello bob", "sent").await;

    bob.open_conversation(&ab).await;
    let got = bob.wait_message("hello bob", false).await;
    assert!(got.sender.contains("alice"), "{got:?}");
    // Shift+Enter is a new line, Enter sends.
    bob.type_keys(
        "composer",
        &format!("hi alice{SHIFT}\u{E007}{RELEASE}from the browser\u{E007}"),
    )
    .await;
    bob.wait_message("hi alice\nfrom the browser", true).await;
    let got = alice
        .wait_message("hi alice\nfrom the browser", false)
        .await;
    assert!(got.sender.contains("bob"), "{got:?}");

    // A group: Alice creates it, Bob joins by its id.
    alice.fill("create-group-name", "rustaceans").await;
    alice.fill("create-group-desc", "crabs only").await;
    alice.click("create-group-submit").await;
    let group = alice
        .wait(
            "action-result with the new group's data-id, and the group in the sidebar",
            "const el = q('action-result'); \
             return shown(el) && el.dataset.id && conv('g:' + el.dataset.id) ? el.dataset.id : null;",
            vec![],
        )
        .await;
    let g: i64 = group
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("group id");
    let gconv = format!("g:{g}");
    bob.fill("join-group-id", &g.to_string()).await;
    bob.click("join-group-submit").await;
    alice.open_conversation(&gconv).await;
    alice.wait_text("conversation-title", "rustaceans").await;
    bob.open_conversation(&gconv).await;
    alice.send("hello group").await;
    bob.wait_message("hello group", false).await;
    bob.send("hello from bob").await;
    alice.wait_message("hello from bob", false).await;

    // Carol on a terminal befriends Alice, joins the group and talks in both.
    let mut carol = Client::connect(stack.gateways[0].tcp).await;
    let c = carol.register("carol", "carol-pw").await;
    carol.login_ok(c, "carol-pw").await;
    let reply = carol
        .call(json!({"msgid": 7, "id": c, "friendid": a}), 1)
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");
    let reply = carol
        .call(json!({"msgid": 9, "id": c, "groupid": g}), 2)
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");
    let reply = carol
        .call(group_chat(c, g, "carol is in the group"), 3)
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");
    let in_group = bob.wait_message("carol is in the group", false).await;
    assert!(in_group.sender.contains("carol"), "{in_group:?}");
    alice.wait_message("carol is in the group", false).await;
    bob.send("welcome carol").await;
    recv_chat(&mut carol, 10, "welcome carol").await;

    let ac = direct_conv(a, c);
    let reply = carol
        .call(chat(c, a, "hello alice, from a terminal"), 4)
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");
    alice.wait_conversation(&ac).await;
    alice.open_conversation(&ac).await;
    alice
        .wait_message("hello alice, from a terminal", false)
        .await;
    alice.send("hi carol, from a browser").await;
    let frame = recv_chat(&mut carol, 6, "hi carol, from a browser").await;
    assert_eq!(frame["id"], a, "{frame}");

    alice.open_conversation(&gconv).await;
    alice.wait_message("welcome carol", false).await;
    alice.send("see you all at the meetup").await;
    bob.wait_message("see you all at the meetup", false).await;
    alice.screenshot("group").await;

    // Presence dots: Bob (a page) and Carol (a terminal) are online, as the
    // roster refresh tells Alice's page.
    for peer in [&ab, &ac] {
        alice
            .wait(
                &format!("presence of {peer} online"),
                "const c = conv(arguments[0]); const p = c && q('presence', c); \
                 return p && p.dataset.online === 'true';",
                vec![json!(peer)],
            )
            .await;
    }

    // The main screen (docs/web-client.png): the list, and a conversation
    // with both sides and read ticks in it.
    alice.open_conversation(&ab).await;
    bob.open_conversation(&ab).await;
    alice.send("are you coming to the meetup tonight?").await;
    bob.wait_message("are you coming to the meetup tonight?", false)
        .await;
    bob.send("yes! see you at 7").await;
    alice.wait_message("yes! see you at 7", false).await;
    alice.send("great, I'll save you a seat").await;
    alice
        .wait_ticks("great, I'll save you a seat", "read")
        .await;
    alice
        .wait(
            "no toast over the screen",
            "return !qa('toast').some(shown);",
            vec![],
        )
        .await;
    alice.screenshot("conversation").await;
    bob.screenshot("conversation").await;
    tokio::join!(alice.quit(), bob.quit());
}

/// A message to a conversation that is not open counts in its badge;
/// opening it clears the badge and the sender's ticks go to read. The
/// other side's typing shows. A second device of the same user (a
/// terminal) and the page stay in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_badges_read_ticks_typing_and_a_second_device() {
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;
    let ab = direct_conv(a, b);

    let (alice, bob) = tokio::join!(
        Browser::start(&stack, "alice"),
        Browser::start(&stack, "bob")
    );
    tokio::join!(alice.open(&url), bob.open(&url));
    alice.login(a, "alice-pw").await;
    bob.login(b, "bob-pw").await;
    bob.wait_conversation(&ab).await;
    bob.wait_unread(&ab, 0).await;

    alice.open_conversation(&ab).await;
    alice.send("first").await;
    bob.wait_unread(&ab, 1).await;
    alice.send("second").await;
    bob.wait_unread(&ab, 2).await;
    bob.wait(
        "last-message of the conversation showing \"second\"",
        "const c = conv(arguments[0]); return c && txt(q('last-message', c)).includes('second');",
        vec![json!(ab)],
    )
    .await;
    // Bob's page has them, he has not read them.
    for text in ["first", "second"] {
        let ticks = alice.wait_ticks(text, "delivered").await;
        assert_eq!(ticks, "delivered", "{text}: read before Bob opened it");
    }
    bob.screenshot("unread").await;

    bob.open_conversation(&ab).await;
    bob.wait_message("second", false).await;
    bob.wait_unread(&ab, 0).await;
    for text in ["first", "second"] {
        alice.wait_ticks(text, "read").await;
    }

    // Bob types: Alice sees it; he sends, and her open conversation does
    // not count it as unread.
    bob.type_keys("composer", "typing a reply").await;
    alice.wait_text("typing", "bob").await;
    bob.type_keys("composer", "\u{E007}").await;
    alice.wait_message("typing a reply", false).await;
    alice.wait_unread(&ab, 0).await;
    bob.wait_ticks("typing a reply", "read").await;
    alice.screenshot("read-ticks").await;

    // Alice on a second device (a terminal): what she sends there shows in
    // her page as hers, and what she sends from the page reaches it.
    let mut alice_term = Client::connect(stack.gateways[1].tcp).await;
    let ack = alice_term.login_acking(a, "alice-pw", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let reply = alice_term.call(chat(a, b, "from my terminal"), 1).await;
    assert_eq!(reply["errno"], 0, "{reply}");
    alice.wait_message("from my terminal", true).await;
    bob.wait_message("from my terminal", false).await;
    alice.send("and from my browser").await;
    let own = recv_chat(&mut alice_term, 6, "and from my browser").await;
    assert_eq!(own["id"], a, "{own}");
    tokio::join!(alice.quit(), bob.quit());
}

/// The node holding the page's WebSocket is killed: the page says it is
/// reconnecting, comes back through nginx on the other node, and shows
/// every message once, those sent while it was away included.
///
/// The page's WebSocket goes through a cuttable proxy in front of nginx
/// (`?ws=`): the kill alone would let the page reconnect within its first
/// backoff, too quickly to be sure that the messages of the outage were
/// sent during it; cut, the outage lasts as long as the test needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_the_page_reconnects_and_shows_every_message_once() {
    let mut stack = Stack::builder().gateways(2).with_nginx().start().await;
    let nginx_ws = stack.nginx.as_ref().expect("nginx").ws;
    let proxy = TcpProxy::start(nginx_ws).await;
    let url = format!("{}?ws=ws://{}/ws", page_url(&stack), proxy.addr());
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;
    let ab = direct_conv(a, b);

    let alice = Browser::start(&stack, "alice").await;
    alice.open(&url).await;
    alice.login(a, "alice-pw").await;
    alice.open_conversation(&ab).await;

    // Which node the page is on: the one with a WebSocket connection.
    let mut node = None;
    let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
    while node.is_none() {
        for (i, gateway) in stack.gateways.iter().enumerate() {
            if gateway_connections(gateway, "ws").await == Some(1.0) {
                node = Some(i);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gateway holds the page's WebSocket"
        );
        if node.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let killed = node.expect("node");
    let other = 1 - killed;

    let mut bob = Client::connect(stack.gateways[other].tcp).await;
    bob.login_ok(b, "bob-pw").await;
    let mut expected = Vec::new();
    let mut seq = 0;
    for i in 1..=3 {
        say(
            &mut bob,
            &mut seq,
            chat(b, a, &format!("before {i}")),
            &mut expected,
        )
        .await;
    }
    alice.wait_message("before 3", false).await;
    alice.send("alice before").await;
    expected.push("alice before".into());
    recv_chat(&mut bob, 6, "alice before").await;
    alice.wait_ticks("alice before", "sent").await;

    // Every state the page shows from here on.
    alice
        .js(
            "window.__states = []; const el = q('connection-state'); \
             new MutationObserver(() => window.__states.push(el.dataset.state + ' ' + txt(el))) \
                 .observe(el, {attributes: true, childList: true, characterData: true, subtree: true});",
            vec![],
        )
        .await;
    stack.kill_gateway(killed).await;
    proxy.cut();
    alice
        .wait(
            "connection-state reconnecting",
            "const el = q('connection-state'); \
             return el && el.dataset.state === 'reconnecting' && shown(el);",
            vec![],
        )
        .await;
    let shown = alice.text_of("connection-state").await;
    assert!(shown.contains("reconnecting"), "{shown:?}");
    alice.screenshot("reconnecting").await;
    for i in 1..=5 {
        say(
            &mut bob,
            &mut seq,
            chat(b, a, &format!("during {i}")),
            &mut expected,
        )
        .await;
    }
    proxy.restore();
    alice
        .wait(
            "connection-state connected again",
            "const el = q('connection-state'); return el && el.dataset.state === 'connected';",
            vec![],
        )
        .await;
    alice.wait_message("during 5", false).await;
    assert_eq!(
        gateway_connections(&stack.gateways[other], "ws").await,
        Some(1.0),
        "the page is back on the other node"
    );
    let states = alice.js("return window.__states;", vec![]).await;
    assert!(
        states.as_array().is_some_and(|s| s
            .iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("reconnecting")))),
        "{states}"
    );

    for i in 1..=2 {
        say(
            &mut bob,
            &mut seq,
            chat(b, a, &format!("after {i}")),
            &mut expected,
        )
        .await;
    }
    alice.send("alice after").await;
    expected.push("alice after".into());
    recv_chat(&mut bob, 6, "alice after").await;
    alice.wait_message("after 2", false).await;
    alice.wait_ticks("alice after", "sent").await;
    assert_once_in_order(&alice.messages().await, &expected);
    alice.screenshot("reconnected").await;
    alice.quit().await;
}

/// 300 messages over raw TCP, then the page opens the conversation and is
/// scrolled to the top until the first one is there: all 300, once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_scrolls_back_through_a_long_conversation() {
    const COUNT: usize = 300;
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;

    // Alice's terminal is a device that acknowledges what it got, so the
    // page finds nothing waiting and has to page back through history.
    let mut alice_term = Client::connect(stack.gateways[0].tcp).await;
    let ack = alice_term.login_acking(a, "alice-pw", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let mut bob_term = Client::connect(stack.gateways[1].tcp).await;
    bob_term.login_ok(b, "bob-pw").await;
    let mut expected = Vec::new();
    let (mut max_rseq, mut from_bob) = (0, 0);
    for i in 1..=COUNT {
        let text = format!("m{i:03}");
        let seq = i as i64;
        if i % 2 == 1 {
            alice_term
                .send(&{
                    let mut m = chat(a, b, &text);
                    m["seq"] = seq.into();
                    m
                })
                .await;
            loop {
                let frame = alice_term.recv().await;
                if let Some(rseq) = frame["rseq"].as_u64() {
                    max_rseq = max_rseq.max(rseq);
                    from_bob += 1;
                }
                if frame["seq"] == seq {
                    assert_eq!(frame["errno"], 0, "{frame}");
                    break;
                }
            }
        } else {
            let reply = bob_term.call(chat(b, a, &text), seq).await;
            assert_eq!(reply["errno"], 0, "{reply}");
        }
        expected.push(text);
    }
    // Bob's last messages to Alice's terminal, acknowledged.
    while from_bob < COUNT / 2 {
        let frame = alice_term.recv().await;
        if let Some(rseq) = frame["rseq"].as_u64() {
            max_rseq = max_rseq.max(rseq);
            from_bob += 1;
        }
    }
    alice_term
        .send(&json!({"msgid": 12, "ack": max_rseq}))
        .await;
    // The history service has all of them (it trails the chat).
    let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
    let mut seq = 10_000;
    loop {
        seq += 1;
        let page = alice_term
            .call(json!({"msgid": 16, "toid": b, "limit": 1}), seq)
            .await;
        if page["messages"][0]["msg"] == expected[COUNT - 1] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never had the last message: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(alice_term);

    let alice = Browser::start(&stack, "alice").await;
    alice.open(&url).await;
    alice.login(a, "alice-pw").await;
    alice.open_conversation(&direct_conv(a, b)).await;
    alice.wait_message(&expected[COUNT - 1], false).await;
    let first_page = alice.messages().await.len();
    assert!(
        first_page < COUNT,
        "the page loaded all {COUNT} at once: nothing to scroll back through"
    );
    // Scroll to the top, as a person would, until the first message is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let shown = alice
            .js(
                "const box = q('messages'); box.scrollTop = 0; \
                 box.dispatchEvent(new Event('scroll')); return qa('message').length;",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(0);
        if alice
            .js("return msgs().some((m) => m.text === 'm001');", vec![])
            .await
            == json!(true)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "scrolling back never reached m001"
        );
        // More older messages, or the first one, before scrolling again.
        alice
            .wait(
                "older messages after scrolling to the top",
                "return qa('message').length > arguments[0] \
                     || msgs().some((m) => m.text === 'm001');",
                vec![json!(shown)],
            )
            .await;
    }
    alice.screenshot("history-top").await;
    let shown = alice.messages().await;
    assert_once_in_order(&shown, &expected);
    assert!(
        shown
            .iter()
            .enumerate()
            .all(|(i, m)| m.mine == (i % 2 == 0)),
        "mine and theirs alternate"
    );
    alice.quit().await;
}

/// Errors from the server are on the screen, never swallowed: a wrong
/// password, a name taken, actions refused, the user service down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_server_errors_are_shown() {
    let mut stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;

    // What the server says, over TCP, for the page to show as it is.
    let mut terminal = Client::connect(stack.gateways[0].tcp).await;
    let wrong = terminal.login(a, "not-her-password").await;
    assert_eq!(wrong["errno"], 1, "{wrong}");
    let wrong_msg = wrong["errmsg"].as_str().expect("errmsg").to_owned();
    terminal
        .send(&json!({"msgid": 4, "name": "alice", "password": "x", "seq": 1}))
        .await;
    let taken = terminal.recv().await;
    assert_ne!(taken["errno"], 0, "{taken}");
    let taken_msg = taken["errmsg"].as_str().expect("errmsg").to_owned();

    let browser = Browser::start(&stack, "errors").await;
    browser.open(&url).await;
    browser.submit_login(a, "not-her-password").await;
    browser.wait_text("login-error", &wrong_msg).await;
    browser.screenshot("login-error").await;

    browser.fill("register-name", "alice").await;
    browser.fill("register-password", "whatever").await;
    browser.click("register-submit").await;
    browser.wait_text("register-error", &taken_msg).await;

    // Logged in, actions the server refuses.
    browser.login(a, "alice-pw").await;
    let nobody = 987_654_321_i64;
    let refused = terminal
        .call(
            json!({"msgid": 1, "id": a, "password": "alice-pw", "acks": true}),
            2,
        )
        .await;
    assert_eq!(refused["errno"], 0, "{refused}");
    let no_user = terminal
        .call(json!({"msgid": 7, "id": a, "friendid": nobody}), 3)
        .await;
    assert_ne!(no_user["errno"], 0, "{no_user}");
    let no_user_msg = no_user["errmsg"].as_str().expect("errmsg").to_owned();
    browser.fill("add-friend-id", &nobody.to_string()).await;
    browser.click("add-friend-submit").await;
    browser
        .wait(
            &format!("action-error or toast showing {no_user_msg:?}"),
            "return [q('action-error'), ...qa('toast')].some((el) => shown(el) && txt(el).includes(arguments[0]));",
            vec![json!(no_user_msg)],
        )
        .await;
    let no_group = terminal
        .call(json!({"msgid": 9, "id": a, "groupid": nobody}), 4)
        .await;
    assert_ne!(no_group["errno"], 0, "{no_group}");
    let no_group_msg = no_group["errmsg"].as_str().expect("errmsg").to_owned();
    browser.fill("join-group-id", &nobody.to_string()).await;
    browser.click("join-group-submit").await;
    browser
        .wait(
            &format!("action-error or toast showing {no_group_msg:?}"),
            "return [q('action-error'), ...qa('toast')].some((el) => shown(el) && txt(el).includes(arguments[0]));",
            vec![json!(no_group_msg)],
        )
        .await;
    browser.screenshot("action-error").await;

    // The user service is down: a login is refused with errno 8, and the
    // page says so.
    stack.terminate_service("user").await;
    let mut fresh = Client::connect(stack.gateways[0].tcp).await;
    let unavailable = fresh.login(a, "alice-pw").await;
    assert_eq!(unavailable["errno"], 8, "{unavailable}");
    let unavailable_msg = unavailable["errmsg"].as_str().expect("errmsg").to_owned();
    browser.open(&url).await;
    browser.submit_login(a, "alice-pw").await;
    browser.wait_text("login-error", &unavailable_msg).await;
    browser.screenshot("service-unavailable").await;
    browser.quit().await;
}

/// The layout as a phone shows it, for the phone test's waits: `L` has the
/// viewport, whether the page overflows it sideways, and the boxes (CSS
/// pixels; `null` when not shown) of the conversation list, the messages
/// pane (the section holding `messages`), `messages`, its back control
/// (the pane's button named "Back…"), the composer and the title.
const LAYOUT: &str = r#"
const box = (el) => {
    if (!shown(el)) return null;
    const r = el.getBoundingClientRect();
    return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width };
};
const pane = q('messages') ? q('messages').closest('section') : null;
const backControl = pane ? Array.from(pane.querySelectorAll('button')).find((b) =>
    /^back/i.test(b.getAttribute('aria-label') || txt(b))) || null : null;
const L = {
    width: window.innerWidth,
    height: window.innerHeight,
    overflows: document.documentElement.scrollWidth > window.innerWidth + 1,
    list: box(q('conversation-list')),
    pane: box(pane),
    messages: box(q('messages')),
    back: box(backControl),
    composer: box(q('composer')),
    title: box(q('conversation-title')),
};
const fills = (b) => !!b && b.left <= 1 && b.right >= L.width - 1;
const inside = (b) => !!b && b.left >= 0 && b.top >= 0 && b.right <= L.width + 0.5 && b.bottom <= L.height + 0.5;
const listAlone = fills(L.list) && !L.pane && !L.messages && !L.overflows;
const conversationAlone = !L.list && fills(L.pane) && fills(L.messages) && inside(L.back)
    && inside(L.composer) && inside(L.title) && !L.overflows;
"#;

/// Colours as the page paints them: `theme()` gives whether the page
/// matches `prefers-color-scheme: dark` and, for the page and the parts of
/// the screen that are shown (a conversation's name in the list, the open
/// conversation's title, a message of theirs, the composer), the relative
/// luminance (WCAG) of the text and of what it stands on (the nearest
/// backgrounds, composited), any CSS colour syntax read through a canvas.
const THEME: &str = r#"
const rgba = (css) => {
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 1;
    const g = canvas.getContext('2d', { willReadFrequently: true });
    g.fillStyle = css;
    g.fillRect(0, 0, 1, 1);
    const d = g.getImageData(0, 0, 1, 1).data;
    return [d[0], d[1], d[2], d[3] / 255];
};
const luminance = ([r, g, b]) => {
    const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
};
const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
        const c = rgba(getComputedStyle(e).backgroundColor);
        if (c[3] > 0) layers.push(c);
        if (c[3] >= 1) break;
    }
    let out = [255, 255, 255];
    for (const [r, g, b, a] of layers.reverse()) out = [r * a + out[0] * (1 - a), g * a + out[1] * (1 - a), b * a + out[2] * (1 - a)];
    return out;
};
const theme = () => {
    const theirs = qa('message').find((m) => m.dataset.mine === 'false');
    const parts = {
        page: document.body,
        'conversation-name': q('conversation-name'),
        'conversation-title': q('conversation-title'),
        'their message': theirs ? q('text', theirs) : null,
        composer: q('composer'),
    };
    const out = {};
    for (const [what, el] of Object.entries(parts)) {
        if (!shown(el)) continue;
        out[what] = { text: luminance(rgba(getComputedStyle(el).color)), background: luminance(background(el)) };
    }
    return { dark: matchMedia('(prefers-color-scheme: dark)').matches, parts: out };
};
"#;

/// Checks what [`THEME`]'s `theme()` saw: dark backgrounds and light text
/// in the dark theme, the opposite in the light one, and every part
/// readable (a contrast of 4.5:1 at least).
fn assert_theme(who: &str, seen: &Value, dark: bool, parts: &[&str]) {
    assert_eq!(
        seen["dark"],
        json!(dark),
        "{who}: matchMedia('(prefers-color-scheme: dark)') does not say {dark}: {seen}"
    );
    for part in parts {
        let colours = &seen["parts"][part];
        let text = colours["text"]
            .as_f64()
            .unwrap_or_else(|| panic!("{who}: {part} not shown: {seen}"));
        let background = colours["background"].as_f64().expect("background");
        let (lighter, darker) = (text.max(background), text.min(background));
        let contrast = (lighter + 0.05) / (darker + 0.05);
        if dark {
            assert!(
                background < 0.1 && text > 0.45,
                "{who}: {part} in the dark theme: background luminance {background:.3} (want < 0.1), text {text:.3} (want > 0.45)"
            );
        } else {
            assert!(
                background > 0.6 && text < 0.1,
                "{who}: {part} in the light theme: background luminance {background:.3} (want > 0.6), text {text:.3} (want < 0.1)"
            );
        }
        assert!(
            contrast >= 4.5,
            "{who}: {part}: contrast {contrast:.1}:1 (want 4.5:1 at least)"
        );
    }
}

/// A phone (390x844, touch), the dark theme and the keyboard: on the phone
/// Alice logs in with Tab and Enter only, sees the conversation list alone,
/// opens a conversation full width with a back control, sends with the
/// keyboard (the composer has the focus: type, Enter), and goes back to
/// the list with the back control and with Escape. Bob, on a desktop in
/// the dark theme, chats with her: dark backgrounds and light text there,
/// the opposite on her (light) phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_the_dark_theme_and_the_keyboard() {
    let stack = Stack::builder().gateways(1).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;
    let ab = direct_conv(a, b);
    // Carol (a terminal) has written to Alice too: a second conversation,
    // unread, in her list.
    let mut carol = Client::connect(stack.gateways[0].tcp).await;
    let c = carol.register("carol", "carol-pw").await;
    let ack = carol.login_acking(c, "carol-pw", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");
    let reply = carol
        .call(json!({"msgid": 7, "id": c, "friendid": a}), 1)
        .await;
    assert_eq!(reply["errno"], 0, "add friend: {reply}");
    // No "time": the gateway stamps it (now), as it does the page's.
    let reply = carol
        .call(
            json!({"msgid": 6, "id": c, "toid": a, "msg": "lunch tomorrow?"}),
            2,
        )
        .await;
    assert_eq!(reply["errno"], 0, "{reply}");

    let (phone, dark) = tokio::join!(
        Browser::start_with(
            &stack,
            "phone",
            BrowserOptions {
                phone: Some((390, 844)),
                color_scheme: ColorScheme::Light,
            },
        ),
        Browser::start_with(
            &stack,
            "dark",
            BrowserOptions {
                phone: None,
                color_scheme: ColorScheme::Dark,
            },
        )
    );
    tokio::join!(phone.open(&url), dark.open(&url));
    dark.login(b, "bob-pw").await;

    // The login form with the keyboard alone: the page puts the focus in
    // the id; type it, Tab to the password, Tab past "Keep me signed in"
    // to "Log in", Enter.
    phone.wait_shown("login-id").await;
    phone.wait_focused("login-id").await;
    phone.press(&a.to_string()).await;
    phone.press(TAB).await;
    phone.wait_focused("login-password").await;
    phone.press("alice-pw").await;
    phone.press(TAB).await;
    phone.wait_focused("login-remember").await;
    phone.press(TAB).await;
    phone.wait_focused("login-submit").await;
    phone.press(ENTER).await;
    phone
        .wait(
            &format!("logged in as {a} with the keyboard"),
            "const me = q('me'); const state = q('connection-state'); \
             return shown(me) && me.dataset.id === String(arguments[0]) \
                 && state && state.dataset.state === 'connected';",
            vec![json!(a)],
        )
        .await;

    // The list alone, the whole width; no messages pane.
    let viewport = phone
        .js("return [window.innerWidth, window.innerHeight];", vec![])
        .await;
    assert_eq!(viewport, json!([390, 844]), "the phone's viewport");
    phone.wait_conversation(&ab).await;
    phone.wait_conversation(&direct_conv(a, c)).await;
    phone
        .wait(
            "phone: the conversation list alone, full width",
            &format!("{LAYOUT}\nreturn listAlone;"),
            vec![],
        )
        .await;

    // Bob adds Carol by her id; his roster, refreshed, shows Alice online.
    dark.fill("add-friend-id", &c.to_string()).await;
    dark.click("add-friend-submit").await;
    dark.wait_conversation(&direct_conv(b, c)).await;

    // A conversation: full width, with a back control; the composer has
    // the focus, and the keyboard sends.
    phone.open_conversation(&ab).await;
    phone.wait_text("conversation-title", "bob").await;
    phone
        .wait(
            "phone: the conversation alone, full width, with a back control",
            &format!("{LAYOUT}\nreturn conversationAlone;"),
            vec![],
        )
        .await;
    phone.wait_focused("composer").await;
    phone.press(&format!("sent from my phone{ENTER}")).await;
    phone.wait_message("sent from my phone", true).await;
    phone
        .wait(
            "the composer emptied, the focus still in it",
            "const c = q('composer'); return c.value === '' && document.activeElement === c;",
            vec![],
        )
        .await;

    dark.open_conversation(&ab).await;
    dark.wait_message("sent from my phone", false).await;
    dark.send("nice, it looks good in the dark too").await;
    phone
        .wait_message("nice, it looks good in the dark too", false)
        .await;
    phone.press(&format!("see you at 7{ENTER}")).await;
    dark.wait_message("see you at 7", false).await;
    phone.wait_ticks("see you at 7", "read").await;

    // The themes: light on the phone, dark on Bob's desktop.
    let light = phone.js(&format!("{THEME}\nreturn theme();"), vec![]).await;
    assert_theme(
        "phone (light)",
        &light,
        false,
        &["page", "conversation-title", "their message", "composer"],
    );
    let seen = dark.js(&format!("{THEME}\nreturn theme();"), vec![]).await;
    assert_theme(
        "desktop (dark)",
        &seen,
        true,
        &[
            "page",
            "conversation-name",
            "conversation-title",
            "their message",
            "composer",
        ],
    );
    // docs/web-client-phone.png.
    phone.screenshot("conversation").await;

    // Back to the list: the back control, then (opened again) Escape.
    // The focus goes to the conversation's item in the list, where the
    // keyboard left off.
    let focus_on_item = "const el = document.activeElement; \
        return !!el && el.dataset.testid === 'conversation' && el.dataset.conv === arguments[0];";
    phone.click_css("button[aria-label^=\"Back\"]").await;
    phone
        .wait(
            "phone: back to the list with the back control",
            &format!("{LAYOUT}\nreturn listAlone;"),
            vec![],
        )
        .await;
    phone
        .wait(
            "focus on the conversation's item",
            focus_on_item,
            vec![json!(ab)],
        )
        .await;
    phone
        .wait(
            "the list showing the last message of each conversation",
            "const last = (c) => txt(q('last-message', conv(c))); \
             return last(arguments[0]).includes('see you at 7') && last(arguments[1]).includes('lunch');",
            vec![json!(ab), json!(direct_conv(a, c))],
        )
        .await;
    phone.screenshot("list").await;
    phone.open_conversation(&ab).await;
    phone
        .wait(
            "phone: the conversation alone again",
            &format!("{LAYOUT}\nreturn conversationAlone;"),
            vec![],
        )
        .await;
    phone.wait_focused("composer").await;
    phone.press(ESCAPE).await;
    phone
        .wait(
            "phone: back to the list with Escape",
            &format!("{LAYOUT}\nreturn listAlone;"),
            vec![],
        )
        .await;
    phone
        .wait(
            "focus on the conversation's item",
            focus_on_item,
            vec![json!(ab)],
        )
        .await;
    // Enter there opens it again, the focus in the composer.
    phone.press(ENTER).await;
    phone
        .wait(
            "phone: the conversation opened with Enter",
            &format!("{LAYOUT}\nreturn conversationAlone;"),
            vec![],
        )
        .await;
    phone.wait_focused("composer").await;

    // Bob's screen, once his page shows Alice online.
    dark.wait(
        "presence of Alice online on Bob's page",
        "const p = q('presence', conv(arguments[0])); return p && p.dataset.online === 'true';",
        vec![json!(ab)],
    )
    .await;
    dark.wait(
        "no toast over the dark screen",
        "return !qa('toast').some(shown);",
        vec![],
    )
    .await;
    // docs/web-client-dark.png.
    dark.screenshot("conversation").await;
    tokio::join!(phone.quit(), dark.quit());
}

/// Presence is pushed to the page: a friend logging in on a terminal shows
/// online in the sidebar and the conversation's header, and offline when
/// they leave, with no roster polling in the page (it asks for the roster
/// at login and reconnect only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_coming_and_going_shows_in_the_page_as_it_happens() {
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;
    let ab = direct_conv(a, b);

    let alice = Browser::start(&stack, "alice").await;
    alice.open(&url).await;
    alice.login(a, "alice-pw").await;
    alice.wait_conversation(&ab).await;
    let shows = |online: bool| {
        format!(
            "const c = conv(arguments[0]); return !!c && q('presence', c).getAttribute('data-online') === '{online}';"
        )
    };
    alice
        .wait("bob shown offline", &shows(false), vec![json!(ab)])
        .await;
    alice.open_conversation(&ab).await;

    // Bob logs in on the other node.
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(bob.login_acking(b, "bob-pw", None).await["errno"], 0);
    alice
        .wait("bob shown online", &shows(true), vec![json!(ab)])
        .await;
    alice.wait_text("conversation-subtitle", "online").await;
    alice.screenshot("presence-online").await;

    // And leaves.
    bob.send(&json!({"msgid": 3, "id": b})).await;
    alice
        .wait("bob shown offline again", &shows(false), vec![json!(ab)])
        .await;
    alice.wait_text("conversation-subtitle", "offline").await;
    alice.quit().await;
}

/// Staying signed in: a reload logs the page in again with its saved
/// session token (not the password, which the page does not keep); "log
/// out everywhere" ends it and a terminal session of the same user on the
/// other node, each told; after that a reload asks for the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stays_signed_in_until_logging_out_everywhere() {
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;

    let alice = Browser::start(&stack, "alice").await;
    alice.open(&url).await;
    alice.login(a, "alice-pw").await;
    let stored = alice
        .js(
            "return localStorage.getItem('clusterchat.session.v1');",
            vec![],
        )
        .await;
    let stored = stored.as_str().expect("a saved session").to_owned();
    assert!(stored.contains("ccs_"), "{stored}");
    assert!(!stored.contains("alice-pw"), "the password is not stored");

    // A reload: signed in again, no login form.
    alice.open(&url).await;
    alice
        .wait(
            "signed in again after the reload",
            "const me = q('me'); const state = q('connection-state'); \
             return shown(me) && me.dataset.id === String(arguments[0]) \
                 && state && state.dataset.state === 'connected';",
            vec![json!(a)],
        )
        .await;
    alice.screenshot("signed-in-after-reload").await;

    // A terminal session of alice on the other node.
    let mut terminal = Client::connect(stack.gateways[1].tcp).await;
    let ack = terminal.login_acking(a, "alice-pw", None).await;
    assert_eq!(ack["errno"], 0, "{ack}");

    alice.click("logout-everywhere").await;
    alice.wait_text("login-error", "logged out").await;
    let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let line = terminal
            .try_recv_line(left)
            .await
            .expect("the terminal is told before it is closed");
        let frame: Value = serde_json::from_str(&line).expect("json");
        if frame["msgid"] == 23 {
            break;
        }
    }
    let cleared = alice
        .js(
            "return localStorage.getItem('clusterchat.session.v1');",
            vec![],
        )
        .await;
    assert!(cleared.is_null(), "the saved session is gone: {cleared}");
    alice.open(&url).await;
    alice.wait_shown("login-password").await;
    alice.quit().await;
}

/// Notifications (the browser's `Notification`, stubbed here to record
/// them as granted): a message in a conversation that is not open makes
/// one, titled and tagged by its conversation; the user's own from another
/// device does not, nor one in the conversation on screen; clicking one
/// opens its conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_where_the_user_is_not_looking_notifies_and_the_click_opens_it() {
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;
    let ab = direct_conv(a, b);

    let alice = Browser::start(&stack, "alice").await;
    alice.open(&url).await;
    alice.login(a, "alice-pw").await;
    alice.wait_conversation(&ab).await;
    alice
        .js(
            "window.__shown = []; \
             window.Notification = class { \
               static get permission() { return 'granted'; } \
               static requestPermission() { return Promise.resolve('granted'); } \
               constructor(title, options) { this.title = title; this.options = options || {}; \
                 this.onclick = null; window.__shown.push(this); } \
               close() { this.closed = true; } };",
            vec![],
        )
        .await;
    let shown = |n: usize| format!("return window.__shown.length === {n};");

    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    assert_eq!(bob.login_acking(b, "bob-pw", None).await["errno"], 0);
    let mut alice_phone = Client::connect(stack.gateways[0].tcp).await;
    assert_eq!(
        alice_phone.login_acking(a, "alice-pw", None).await["errno"],
        0
    );

    // Nothing open: bob's message notifies.
    assert_eq!(bob.call(chat(b, a, "ping from bob"), 1).await["errno"], 0);
    alice.wait("one notification", &shown(1), vec![]).await;
    let first = alice
        .js(
            "const n = window.__shown[0]; return [n.title, n.options.body, n.options.tag];",
            vec![],
        )
        .await;
    assert_eq!(first, json!(["bob", "ping from bob", ab]));

    // Her own message, from her phone: no notification.
    assert_eq!(
        alice_phone.call(chat(a, b, "from my phone"), 1).await["errno"],
        0
    );
    alice.wait_conversation(&ab).await;
    alice
        .wait(
            "her own message in the list",
            "const c = conv(arguments[0]); return !!c && txt(q('last-message', c)).includes('from my phone');",
            vec![json!(ab)],
        )
        .await;
    assert_eq!(alice.js("return window.__shown.length;", vec![]).await, 1);

    // The click opens the conversation; a message there, on screen, does
    // not notify.
    alice.js("window.__shown[0].onclick();", vec![]).await;
    alice.wait_text("conversation-title", "bob").await;
    assert_eq!(bob.call(chat(b, a, "on screen"), 2).await["errno"], 0);
    alice.wait_message("on screen", false).await;
    assert_eq!(alice.js("return window.__shown.length;", vec![]).await, 1);
    alice.quit().await;
}

/// Managing friends and groups from a conversation's details: a group's
/// members with the creator marked and who is online, renaming it (its
/// creator), leaving it (a member), removing a friend, blocking him.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_rename_a_group_leave_one_and_remove_a_friend() {
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;
    // Bob, on a terminal: creates one group, alice will create another.
    // A classic login: bob stays silent while the browser works, longer
    // than the idle timeout that closes a silent client that acknowledges.
    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    bob.login_ok(b, "bob-pw").await;
    let bobs = bob
        .call(json!({"msgid": 8, "groupname": "bobs", "groupdesc": ""}), 1)
        .await["groupid"]
        .as_i64()
        .expect("groupid");
    let mut alice_term = Client::connect(stack.gateways[0].tcp).await;
    assert_eq!(
        alice_term.login_acking(a, "alice-pw", None).await["errno"],
        0
    );
    assert_eq!(
        alice_term
            .call(json!({"msgid": 9, "groupid": bobs}), 1)
            .await["errno"],
        0
    );
    let hers = alice_term
        .call(
            json!({"msgid": 8, "groupname": "alices", "groupdesc": ""}),
            2,
        )
        .await["groupid"]
        .as_i64()
        .expect("groupid");
    assert_eq!(
        bob.call(json!({"msgid": 9, "groupid": hers}), 2).await["errno"],
        0
    );
    drop(alice_term);

    let alice = Browser::start(&stack, "alice").await;
    alice.open(&url).await;
    alice.login(a, "alice-pw").await;

    // Her group: members, she is the creator; she renames it.
    let her_conv = format!("g:{hers}");
    alice.wait_conversation(&her_conv).await;
    alice.open_conversation(&her_conv).await;
    alice.click("conversation-details").await;
    alice
        .wait(
            "the members, the creator marked, bob online",
            "const ul = q('members'); if (!ul) return false; \
             const me = ul.querySelector(`li[data-id='${arguments[0]}']`); \
             const bob = ul.querySelector(`li[data-id='${arguments[1]}']`); \
             return !!me && me.dataset.role === 'creator' && !!bob && bob.dataset.role === 'member' \
                 && bob.dataset.online === 'true';",
            vec![json!(a), json!(b)],
        )
        .await;
    alice.screenshot("group-details").await;
    alice.fill("rename-input", "alice and friends").await;
    alice.click("rename-submit").await;
    alice
        .wait_text("conversation-title", "alice and friends")
        .await;

    // Bob's group: she is a member, and leaves it.
    let bobs_conv = format!("g:{bobs}");
    alice.open_conversation(&bobs_conv).await;
    alice.click("conversation-details").await;
    alice.wait_shown("leave-group").await;
    alice.click("leave-group").await;
    alice.wait_text("details", "not in this group").await;
    let sent = bob.call(group_chat(b, bobs, "after she left"), 3).await;
    assert_eq!(sent["errno"], 0, "{sent}");

    // Bob, no longer a friend.
    let ab = direct_conv(a, b);
    alice.open_conversation(&ab).await;
    alice.click("conversation-details").await;
    alice.click("remove-friend").await;
    alice.wait_text("details", "Not a friend").await;
    alice.wait_text("conversation-subtitle", "id").await;
    let shown = alice.js("return txt(q('messages'));", vec![]).await;
    assert!(
        !shown.as_str().unwrap_or("").contains("after she left"),
        "{shown}"
    );

    // And blocked: his messages are refused, with the reason.
    alice.click("block").await;
    alice.wait_shown("unblock").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let refused = bob.call(chat(b, a, "hello?"), 4).await;
    assert_eq!(refused["errno"], 4, "{refused}");
    alice.click("unblock").await;
    alice.wait_shown("block").await;
    alice.quit().await;
}

/// Search: a word of a message that is not on screen (older than the page
/// a conversation opens with) is found from the sidebar, marked in the
/// hit; the hit opens the conversation at that message; a search that
/// finds nothing says so, and the list comes back.
#[tokio::test]
async fn search_finds_an_old_message_and_opens_the_conversation_there() {
    const COUNT: usize = 60;
    let stack = Stack::builder().gateways(2).with_nginx().start().await;
    let url = page_url(&stack);
    let a = register_on_terminal(&stack, "alice", "alice-pw").await;
    let b = register_on_terminal(&stack, "bob", "bob-pw").await;
    befriend_on_terminal(&stack, a, "alice-pw", b).await;

    // Alice's terminal takes and acknowledges them all, so the page finds
    // nothing waiting: the first message is only in history, a page back.
    let mut alice_term = Client::connect(stack.gateways[0].tcp).await;
    assert_eq!(
        alice_term.login_acking(a, "alice-pw", None).await["errno"],
        0
    );
    let mut bob_term = Client::connect(stack.gateways[1].tcp).await;
    bob_term.login_ok(b, "bob-pw").await;
    for i in 0..COUNT {
        let text = if i == 0 {
            "我们明天去北京开会吧".to_owned()
        } else {
            format!("filler {i}")
        };
        let reply = bob_term.call(chat(b, a, &text), i as i64 + 1).await;
        assert_eq!(reply["errno"], 0, "{reply}");
    }
    let (mut got, mut max_rseq) = (0, 0);
    while got < COUNT {
        let frame = alice_term.recv().await;
        if let Some(rseq) = frame["rseq"].as_u64() {
            max_rseq = max_rseq.max(rseq);
            got += 1;
        }
    }
    alice_term
        .send(&json!({"msgid": 12, "ack": max_rseq}))
        .await;
    // Searchable once the history service stored it (it trails the chat).
    let deadline = tokio::time::Instant::now() + BROWSER_PATIENCE;
    loop {
        let found = bob_term.call(json!({"msgid": 31, "q": "北京"}), 100).await;
        if found["hits"].as_array().is_some_and(|h| h.len() == 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never searchable: {found}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(alice_term);

    let alice = Browser::start(&stack, "alice").await;
    alice.open(&url).await;
    alice.login(a, "alice-pw").await;
    alice.fill("search-input", "北京").await;
    alice.click("search-submit").await;
    alice
        .wait(
            "one hit, 北京 marked, in the conversation with bob",
            "const hits = document.querySelectorAll(\"[data-testid='search-hit']\"); \
             if (hits.length !== 1) return false; const h = hits[0]; \
             const mark = h.querySelector('mark'); \
             return h.dataset.conv === arguments[0] && !!mark && mark.textContent === '北京' \
                 && txt(h).includes('bob') && txt(h).includes('我们明天去');",
            vec![json!(direct_conv(a, b))],
        )
        .await;
    alice.wait_text("search-status", "1 message").await;
    alice.screenshot("search").await;

    alice.click("search-hit").await;
    alice.wait_text("conversation-title", "bob").await;
    alice
        .wait(
            "the found message on screen, marked",
            "const m = document.querySelector('.msg.found'); \
             if (!m) return false; const r = m.getBoundingClientRect(); \
             const box = q('messages').getBoundingClientRect(); \
             return txt(m).includes('北京开会') && r.bottom > box.top && r.top < box.bottom;",
            vec![],
        )
        .await;
    alice.screenshot("search-opened").await;

    alice.fill("search-input", "不存在的词").await;
    alice.click("search-submit").await;
    alice.wait_text("search-status", "Nothing found").await;
    alice.click("search-clear").await;
    alice.wait_shown("conversation-list").await;
    alice.quit().await;
}
