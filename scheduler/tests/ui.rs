//! The dashboard at `/ui` served by a real scheduler: hostile text stays text, every page carries
//! the strict CSP and says which node answered, the task list pages by cursor, live figures
//! stream over SSE, and actions need this origin, the CSRF token and a confirmation.

mod common;

use common::{csrf_of, failing_worker, get, jobs, jobs_in, request, start, submit, wait_for_ledger};
use kiln_ledger::TaskState;

const HOSTILE: &str = "<script>alert('owned')</script><img src=x onerror=alert(1)>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_last_error_shows_as_text_on_every_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    submit(&node, jobs_in("hostile", "evil", 2)).await;
    let _worker = failing_worker(&node, "hostile", HOSTILE).await;
    wait_for_ledger(&node, "two dead letters", |l| l.counts().dead_lettered == 2).await;
    let id = node.handle().read(|l, _| l.list(&Default::default())[0].id.0).await.expect("read");
    let http = node.http_addr();
    for path in [format!("/ui/tasks/{id}"), "/ui/dead-letters".to_owned(), "/ui/tasks?state=dead_lettered".to_owned()] {
        let page = get(http, &path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(
            page.body.contains("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"),
            "{path} shows the error as text"
        );
        assert!(!page.body.contains("<script>alert"), "{path} must not carry the error as markup");
        assert!(!page.body.contains("<img src=x"), "{path}");
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_has_a_strict_csp_and_says_which_node_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    submit(&node, jobs("p", 3)).await;
    let http = node.http_addr();
    for path in ["/ui", "/ui/tasks", "/ui/tasks/1", "/ui/dead-letters", "/ui/workers", "/ui/cluster"] {
        let page = get(http, path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let csp = page.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(page.body.contains("Answered by node 1 (the leader)"), "{path}: {}", page.body);
        assert!(
            !page.body.contains("http://") || !page.body.contains("src=\"http"),
            "{path} loads nothing from outside"
        );
        assert!(!page.body.contains(" style=\""), "{path} has no inline style (the CSP would block it)");
    }
    let overview = get(http, "/ui").await.body;
    assert!(overview.contains("data-live=\"total.submitted\">3<"), "{overview}");
    let chart = get(http, "/ui/chart.svg").await;
    assert_eq!(chart.header("content-type"), Some("image/svg+xml; charset=utf-8"));
    assert!(chart.body.starts_with("<svg"));
    let script = get(http, "/ui/static/app.js").await;
    assert!(script.body.contains("EventSource") && !script.body.contains("innerHTML"), "the script writes text only");
    assert_eq!(get(http, "/ui/tasks/999").await.status, 404);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_list_filters_and_pages_by_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    submit(&node, jobs("many", 60)).await;
    let http = node.http_addr();
    let first = get(http, "/ui/tasks?state=queued&release=7").await.body;
    assert_eq!(first.matches("<tr><td class=\"num\"><a href=\"/ui/tasks/").count(), 50, "{first}");
    let next = first.split("rel=\"next\"").next().and_then(|s| s.rsplit("href=\"").next()).expect("a next link");
    let next = next.trim_end_matches(['"', ' ']).replace("&amp;", "&");
    assert!(next.contains("after=50"), "{next}");
    let second = get(http, &next).await.body;
    assert_eq!(second.matches("<tr><td class=\"num\"><a href=\"/ui/tasks/").count(), 10, "{second}");
    assert!(!second.contains("rel=\"next\""));
    let none = get(http, "/ui/tasks?release=8").await.body;
    assert!(none.contains("No task matches."));
    let bad = get(http, "/ui/tasks?state=%3Cb%3E").await.body;
    assert!(bad.contains("unknown state &quot;&lt;b&gt;&quot;"), "{bad}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counts_arrive_over_server_sent_events() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let mut stream = tokio::net::TcpStream::connect(node.http_addr()).await.expect("connect");
    stream.write_all(b"GET /ui/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n").await.expect("write");
    submit(&node, jobs("live", 4)).await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while !seen.contains("\"total.submitted\":\"4\"") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("an event with 4 submitted")
            .expect("read");
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: snapshot"), "{seen}");
    assert!(seen.contains("Answered by node 1"), "{seen}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_this_origin_the_token_and_a_confirmation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    submit(&node, jobs_in("bad", "dl", 3)).await;
    let worker = failing_worker(&node, "bad", "decode failed: bad header").await;
    wait_for_ledger(&node, "three dead letters", |l| l.counts().dead_lettered == 3).await;
    worker.abort();
    let http = node.http_addr();
    let page = get(http, "/ui/dead-letters").await.body;
    assert!(page.contains("decode failed: bad header") && page.contains(">3</td>"), "{page}");
    let token = csrf_of(&page);
    let origin = format!("http://{http}");
    let form = |token: &str, confirmed: bool| {
        format!("csrf={token}&reason=decode+failed{}", if confirmed { "&confirmed=yes" } else { "" })
    };

    let cross =
        request(http, "POST", "/ui/actions/requeue", &[("Origin", "http://evil.example")], &form(&token, true)).await;
    assert_eq!(cross.status, 403, "{}", cross.body);
    let no_origin = request(http, "POST", "/ui/actions/requeue", &[], &form(&token, true)).await;
    assert_eq!(no_origin.status, 403);
    let bad_token = request(http, "POST", "/ui/actions/requeue", &[("Origin", &origin)], &form("guess", true)).await;
    assert_eq!(bad_token.status, 403);
    let ask = request(http, "POST", "/ui/actions/requeue", &[("Origin", &origin)], &form(&token, false)).await;
    assert_eq!(ask.status, 200);
    assert!(ask.body.contains("That is <strong>3</strong> tasks"), "{}", ask.body);
    let still = node.handle().read(|l, _| l.counts().dead_lettered).await.expect("read");
    assert_eq!(still, 3, "nothing happens before the confirmation");

    let done = request(http, "POST", "/ui/actions/requeue", &[("Origin", &origin)], &form(&token, true)).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Requeued 3 tasks."), "{}", done.body);
    let queued = node
        .handle()
        .read(|l, _| l.list(&kiln_ledger::TaskFilter { state: Some(TaskState::Queued), ..Default::default() }).len())
        .await
        .expect("read");
    assert_eq!(queued, 3);

    let cancel = format!("csrf={token}&task=1&confirmed=yes");
    let cancelled = request(http, "POST", "/ui/actions/cancel", &[("Origin", &origin)], &cancel).await;
    assert!(cancelled.body.contains("Task 1 is cancelled."), "{}", cancelled.body);
    let state = node.handle().read(|l, _| l.task(kiln_types::TaskId(1)).map(|t| t.state)).await.expect("read");
    assert_eq!(state, Some(TaskState::Cancelled));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_drained_from_the_dashboard_is_leased_nothing_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let worker = failing_worker(&node, "drained", "should never run").await;
    wait_for_ledger(&node, "the worker registered", |l| {
        l.workers().iter().any(|w| w.spec.id.as_str() == "w-scripted" && w.connected)
    })
    .await;
    let http = node.http_addr();
    let page = get(http, "/ui/workers").await.body;
    assert!(page.contains("name=\"worker\" value=\"w-scripted\"") && page.contains("Drain…"), "{page}");
    let token = csrf_of(&page);
    let origin = format!("http://{http}");

    let ask =
        request(http, "POST", "/ui/actions/drain", &[("Origin", &origin)], &format!("csrf={token}&worker=w-scripted"))
            .await;
    assert_eq!(ask.status, 200, "{}", ask.body);
    assert!(ask.body.contains("Drain worker w-scripted.") && ask.body.contains("Yes, drain"), "{}", ask.body);
    let draining =
        |l: &kiln_ledger::Ledger| l.workers().iter().any(|w| w.spec.id.as_str() == "w-scripted" && w.draining);
    assert!(
        !node.handle().read(move |l, _| draining(l)).await.expect("read"),
        "nothing happens before the confirmation"
    );

    let confirm = format!("csrf={token}&worker=w-scripted&confirmed=yes");
    let cross = request(http, "POST", "/ui/actions/drain", &[("Origin", "http://evil.example")], &confirm).await;
    assert_eq!(cross.status, 403);
    let done = request(http, "POST", "/ui/actions/drain", &[("Origin", &origin)], &confirm).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Worker w-scripted is draining"), "{}", done.body);
    assert!(node.handle().read(move |l, _| draining(l)).await.expect("read"));

    // The worker still asks for work, but the tasks of its queue stay queued: had one been leased
    // to it, it would have been failed (and dead-lettered) at once.
    submit(&node, jobs_in("drained", "after-drain", 2)).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let counts = node.handle().read(|l, _| (l.counts().dead_lettered, l.counts().leased)).await.expect("read");
    assert_eq!(counts, (0, 0), "a draining worker was leased tasks");
    let page = get(http, "/ui/workers").await.body;
    assert!(page.contains("<td>draining</td>") && !page.contains("Drain…"), "{page}");
    let unknown = format!("csrf={token}&worker=nobody&confirmed=yes");
    let refused = request(http, "POST", "/ui/actions/drain", &[("Origin", &origin)], &unknown).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    worker.abort();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_shows_every_members_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path()).await;
    let page = get(node.http_addr(), "/ui/cluster").await.body;
    let row = page.split("<h2>Members</h2>").nth(1).expect("a members table");
    assert!(row.contains(&format!("<td>{}</td>", env!("CARGO_PKG_VERSION"))), "{row}");
    assert!(row.contains("fenced_sessions") && !row.contains("did not answer"), "{row}");
    node.shutdown().await;
}
