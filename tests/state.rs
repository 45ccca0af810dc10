//! The policy state across process deaths: a child process (this test binary, re-run as one
//! named test with the child's variables set) locks an account and opens a session, and is
//! killed with SIGKILL; what it was told was done must still be done. And a gateway refuses, by name, a store it cannot trust.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use faspex_gate::auth::testing::TestDirectory;
use faspex_gate::auth::Directory;
use faspex_gate::clock::Timestamp;
use faspex_gate::config::PolicyConfig;
use faspex_gate::policy::{CheckRules, LoginRefused, LoginRequest, Policy};
use faspex_gate::store::embedded::EmbeddedStore;
use faspex_gate::store::SessionToken;

use crate::util::{run_to_exit, ConfigBuilder, TestFiles};

const PHASE: &str = "FASPEX_GATE_TEST_CHILD_PHASE";
const STORE: &str = "FASPEX_GATE_TEST_CHILD_STORE";
const TOKEN: &str = "FASPEX_GATE_TEST_CHILD_TOKEN";

fn open(dir: &std::path::Path) -> (Policy, Arc<EmbeddedStore>) {
    crate::engine::open(dir, PolicyConfig::default(), CheckRules::default())
}

/// Two users, passwords `pw-<name>`.
fn users() -> Arc<dyn Directory> {
    TestDirectory::with_accounts(&["ann", "bob"])
}

fn request<'a>(user: &'a str, password: &'a str) -> LoginRequest<'a> {
    crate::engine::browser_login(
        user,
        password,
        "192.0.2.1",
        "test",
        format!("browser-{user}"),
    )
}

/// The "write" phase: five wrong guesses lock `ann`, and `bob` logs in. Returns the unlock time,
/// bob's token and his session's start.
async fn lock_ann_and_log_bob_in(policy: &Policy) -> (Timestamp, SessionToken, Timestamp) {
    for i in 0..5 {
        let r = policy
            .login(request("ann", &format!("guess{i}")), &users())
            .await;
        assert!(r.is_err());
    }
    let locked = policy.lockouts().await.unwrap();
    assert_eq!(locked.len(), 1);
    let bob = policy
        .login(request("bob", "pw-bob"), &users())
        .await
        .unwrap();
    (locked[0].until, bob.token, bob.session.started)
}

/// In a normal run, the child's scenario in this process: it locks ann and logs bob in. Started by
/// the kill -9 tests with the child's variables set, it runs a phase, says so on stdout, and waits
/// to be killed.
#[tokio::test]
async fn the_child_scenario_locks_ann_and_logs_bob_in() {
    let (Ok(phase), Ok(dir)) = (std::env::var(PHASE), std::env::var(STORE)) else {
        let tmp = tempfile::tempdir().unwrap();
        let (policy, store) = open(tmp.path());
        let (until, token, _) = lock_ann_and_log_bob_in(&policy).await;
        assert!(until > policy.now());
        assert!(policy.session(&token, "/").await.unwrap().is_ok());
        assert_eq!(policy.status().await.unwrap().accounts_locked, 1);
        store.close().await.unwrap();
        return;
    };
    let (policy, _store) = open(std::path::Path::new(&dir));
    match phase.as_str() {
        "write" => {
            let (until, token, started) = lock_ann_and_log_bob_in(&policy).await;
            // The answers are out: from here on, anything may kill us.
            println!(
                "READY {} {} {}",
                until.as_millis(),
                token.expose(),
                started.as_millis()
            );
        }
        "touch" => {
            let token = SessionToken::from_client(&std::env::var(TOKEN).unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s = policy
                .session(&token, "/aspera/faspex/inbox")
                .await
                .unwrap()
                .expect("live");
            println!("TOUCHED {}", s.last_activity.as_millis());
        }
        other => panic!("unknown phase {other}"),
    }
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// Run the child in `phase`, wait for its line starting with `want`, and SIGKILL it, `grace`
/// after that line.
fn run_child_and_kill(
    phase: &str,
    dir: &std::path::Path,
    token: &str,
    want: &str,
    grace: Duration,
) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "state::the_child_scenario_locks_ann_and_logs_bob_in",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(PHASE, phase)
        .env(STORE, dir)
        .env(TOKEN, token)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Read on a thread, so that a child that hangs fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            // libtest may print "test … ... " on the same line first.
            Ok(Ok(l)) if l.contains(want) => break l[l.find(want).unwrap_or(0)..].to_owned(),
            Ok(Ok(_)) => continue,
            other => {
                let _ = child.kill();
                panic!("the child did not say {want}: {other:?}");
            }
        }
    };
    std::thread::sleep(grace);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    line
}

#[tokio::test]
async fn a_lock_and_a_session_survive_kill_9_and_activity_is_at_most_a_second_late() {
    let tmp = tempfile::tempdir().unwrap();
    // Killed the moment it has answered: what is written through must be on disk.
    let line = run_child_and_kill("write", tmp.path(), "", "READY ", Duration::ZERO);
    let parts: Vec<&str> = line.split_whitespace().collect();
    let until = Timestamp::from_millis(parts[1].parse().unwrap());
    let token = parts[2].to_owned();
    let started: u64 = parts[3].parse().unwrap();

    {
        let (policy, store) = open(tmp.path());
        let locks = policy.lockouts().await.unwrap();
        assert_eq!(locks.len(), 1, "the lockout was not lost");
        assert_eq!(locks[0].key.account, "ann");
        assert_eq!(locks[0].until, until, "the same unlock time");
        match policy.login(request("ann", "pw-ann"), &users()).await {
            Err(LoginRefused::AccountLocked { until: u, .. }) => assert_eq!(u, until),
            other => panic!("still locked: {other:?}"),
        }
        let s = policy
            .session(&SessionToken::from_client(&token), "/")
            .await
            .unwrap()
            .expect("the session is still valid");
        assert_eq!(&*s.account, "bob");
        assert_eq!(s.started.as_millis(), started);
        assert_eq!(policy.status().await.unwrap().seats_used, 1);
        store.close().await.unwrap();
    }

    // A second child touches the session and dies 1.2 s later: the activity was written behind
    // in time.
    let line = run_child_and_kill(
        "touch",
        tmp.path(),
        &token,
        "TOUCHED ",
        Duration::from_millis(1200),
    );
    let touched: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(touched > started);
    let (policy, store) = open(tmp.path());
    let s = policy
        .sessions()
        .await
        .unwrap()
        .into_iter()
        .find(|s| &*s.account == "bob")
        .unwrap();
    assert_eq!(s.last_activity.as_millis(), touched);
    store.close().await.unwrap();
}

#[test]
fn the_gateway_starts_on_a_store_a_killed_process_left_and_reports_it() {
    let files = TestFiles::new();
    let state = files.path("state");
    let line = run_child_and_kill("write", &state, "", "READY ", Duration::ZERO);
    assert!(line.starts_with("READY"));
    let cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    let gw = crate::util::GatewayProcess::start(files, &cfg);
    assert!(
        gw.wait_log("state store opened", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("state store opened"))
        .unwrap();
    assert!(line.contains("sessions=1"), "{line}");
    assert!(line.contains("accounts_locked=1"), "{line}");
}

/// Start `run` on `cfg` and expect it to refuse, naming the store file.
fn refused(files: &TestFiles, cfg: &ConfigBuilder, want: &str) {
    let out = run_to_exit(files, cfg);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("state.redb"), "names the file: {stderr}");
    assert!(stderr.contains(want), "says why ({want}): {stderr}");
    assert!(!stderr.contains("listener ready"), "never served: {stderr}");
}

#[test]
fn the_gateway_refuses_a_corrupt_store_by_name() {
    let files = TestFiles::new();
    std::fs::write(files.path("state/state.redb"), vec![0x42u8; 8192]).unwrap();
    let cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    refused(&files, &cfg, "state.redb");
}

#[test]
fn the_gateway_refuses_a_store_from_a_newer_schema() {
    let files = TestFiles::new();
    {
        let db = redb::Database::create(files.path("state/state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("schema_version", 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    refused(&files, &cfg, "newer faspex-gate (schema 2");
}

#[test]
fn the_gateway_refuses_a_store_it_cannot_write() {
    let files = TestFiles::new();
    std::fs::write(files.path("not-a-folder"), b"x").unwrap();
    let mut cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    let q = format!(
        "{:?}",
        files.path("not-a-folder/state").display().to_string()
    );
    cfg.set("store", "path", &q);
    refused(&files, &cfg, "cannot be created");
}

#[test]
fn a_second_gateway_on_the_same_store_is_refused() {
    let files = TestFiles::new();
    let cfg = ConfigBuilder::new(&files, "http://127.0.0.1:9");
    let dir = files.path("state");
    let (_policy, _store) = open(&dir);
    refused(&files, &cfg, "in use by another process");
}
