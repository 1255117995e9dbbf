//! The web client in a real browser: headless Chromium (Debian's, through
//! chromedriver) loads the page from the stack's nginx, as a person opens
//! http://127.0.0.1:8080/, and uses it by the page's `data-testid`
//! elements: register, log in, befriend, chat one-to-one and in a group
//! with a user on a terminal (raw TCP), unread badges, read ticks, typing
//! and a second device, a gateway killed under the page, history scrolled
//! back through 300 messages, and the server's errors on the screen.
//!
//! Screenshots of the main screens are saved under
//! target/browser-screenshots/<backend>/ (and of any screen a wait gave
//! up on, as FAILED-*.png).

use std::time::Duration;

use e2e::{
    Client, RECV_TIMEOUT, Stack,
    browser::{
        BROWSER_PATIENCE, Browser, RELEASE, SHIFT, ShownMessage, direct_conv, gateway_connections,
        page_url,
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
