//! Checks of the test support itself, without weir: the upstream (clear text and TLS),
//! the certificates, the generated bodies, and the process harness (against a stand-in
//! shell script).

use std::time::{Duration, Instant};

use http::Version;

use crate::support::body::{self, pattern_digest};
use crate::support::client::{self, client, h2_client};
use crate::support::raw;
use crate::support::tls::{self, Ca, Pki};
use crate::support::upstream::{Reply, Upstream, closed_port};
use crate::support::weir::WeirBuilder;

// === upstream ===

#[tokio::test]
async fn upstream_records_and_replies() {
    let up = Upstream::start(|req, i| {
        Reply::new(201)
            .header("x-index", i.to_string())
            .header("x-echo-path", &req.path)
            .body(format!("got {}", req.body_str()))
    })
    .await;

    let resp = client()
        .post(format!("{}/v1/items?page=2", up.url()))
        .header("X-Custom", "a")
        .header("x-bytes", &b"\xffraw"[..])
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-index"], "0");
    assert_eq!(resp.headers()["x-echo-path"], "/v1/items?page=2");
    assert_eq!(resp.text().await.unwrap(), "got hello");

    let reqs = up.wait_for(1).await;
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/items?page=2");
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.header_str("x-custom"), Some("a"));
    assert_eq!(r.header("X-Bytes"), Some(&b"\xffraw"[..]));
    assert_eq!(r.authority.as_deref(), Some(up.addr().to_string().as_str()));
    assert_eq!(&r.body[..], b"hello");
    assert_eq!((r.body_len, r.body_crc32), body::digest(b"hello"));
    assert_eq!(r.conn, 0);
    assert!(r.client_cert.is_none());
    assert_eq!(up.count(), 1);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn raw_requests_reach_the_upstream_byte_for_byte() {
    let up = Upstream::start(|req, _| Reply::new(202).body(req.path.clone())).await;
    // Neither side resolves the dot segments or the escapes: what a test writes arrives.
    let resp = raw::send(
        up.addr(),
        "GET /a/../b/%2e%2e/c%2F\\d?q=/../ HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 202);
    assert_eq!(resp.header("Content-Length"), Some("28"));
    assert_eq!(resp.body, b"/a/../b/%2e%2e/c%2F\\d?q=/../");
    let got = up.request(0);
    assert_eq!(got.path, "/a/../b/%2e%2e/c%2F\\d?q=/../");
    assert_eq!(got.header_all("host"), [&b"x"[..], &b"y"[..]]);
}

#[tokio::test]
async fn upstream_speaks_h2_prior_knowledge() {
    let up = Upstream::start(|_, _| Reply::ok().json(&serde_json::json!({"ok": true}))).await;
    let h2 = h2_client();
    for _ in 0..3 {
        let resp = h2.get(format!("{}/a", up.url())).send().await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["ok"], true);
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.version == Version::HTTP_2));
    // One connection, multiplexed.
    assert!(reqs.iter().all(|r| r.conn == 0));
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn upstream_http1_only_refuses_h2() {
    let up = Upstream::builder().http1_only().start().await;
    assert!(h2_client().get(up.url()).send().await.is_err());
    let resp = client().get(up.url()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn upstream_queue_then_exhausted() {
    let up = Upstream::builder()
        .replies([Reply::new(503), Reply::new(200).body("second")])
        .start()
        .await;
    let c = client();
    let statuses = [
        c.get(up.url()).send().await.unwrap().status().as_u16(),
        c.get(up.url()).send().await.unwrap().status().as_u16(),
    ];
    assert_eq!(statuses, [503, 200]);
    let third = c.get(up.url()).send().await.unwrap();
    assert_eq!(third.status(), 500);
    assert_eq!(third.text().await.unwrap(), "upstream script exhausted");
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn upstream_records_before_a_delayed_reply() {
    let up = Upstream::start(|_, _| Reply::ok().delay(Duration::from_millis(300))).await;
    let url = up.url();
    let call = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    // Recorded while the reply is still being held back.
    let reqs = up.wait_for(1).await;
    assert_eq!(reqs.len(), 1);
    let started = reqs[0].received_at;
    assert_eq!(call.await.unwrap(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn upstream_hang_and_abort() {
    let up = Upstream::start(|req, _| match req.path.as_str() {
        "/hang" => Reply::hang(),
        _ => Reply::abort(),
    })
    .await;
    let quick = client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = quick
        .get(format!("{}/hang", up.url()))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let err = client()
        .get(format!("{}/abort", up.url()))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn upstream_chunked_and_broken_bodies() {
    let up = Upstream::start(|req, _| match req.path.as_str() {
        "/chunks" => Reply::ok().chunks(vec![
            (Duration::ZERO, "one,".into()),
            (Duration::from_millis(20), "two,".into()),
            (Duration::from_millis(20), "three".into()),
        ]),
        _ => Reply::ok().pattern_then_fail(1 << 20, 100_000),
    })
    .await;
    let resp = client()
        .get(format!("{}/chunks", up.url()))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.text().await.unwrap(), "one,two,three");

    let resp = client()
        .get(format!("{}/broken", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-length"], "1048576");
    assert!(resp.bytes().await.is_err());
}

#[tokio::test]
async fn upstream_streams_big_bodies_both_ways() {
    const UP: u64 = 50 << 20;
    const DOWN: u64 = 30 << 20;
    let up = Upstream::sink(DOWN).await;
    for h2 in [false, true] {
        let c = if h2 { h2_client() } else { client() };
        let mut resp = c
            .put(format!("{}/upload", up.url()))
            .body(client::pattern_body(UP))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut digest = body::Digest::new();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            digest.update(&chunk);
        }
        assert_eq!(digest.finish(), pattern_digest(DOWN));
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert!(r.body.is_empty(), "count_bodies() must not store");
        assert_eq!((r.body_len, r.body_crc32), pattern_digest(UP));
    }
    assert_eq!(reqs[1].version, Version::HTTP_2);
}

#[tokio::test]
async fn closed_port_refuses() {
    let port = closed_port();
    let err = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

// === bodies ===

#[test]
fn pattern_is_consistent() {
    let len = 3 * body::CHUNK + 1234;
    let bytes = body::pattern_bytes(len);
    assert_eq!(body::digest(&bytes), pattern_digest(len as u64));
    assert_eq!(&body::pattern_chunk(1000, 10)[..], &bytes[1000..1010]);
    assert_ne!(pattern_digest(1000), pattern_digest(1001));
}

// === TLS ===

#[tokio::test]
async fn tls_upstream_with_trusted_ca() {
    let pki = Pki::new();
    let up = Upstream::builder()
        .tls(pki.server.server_config())
        .start()
        .await;
    assert!(up.url().starts_with("https://127.0.0.1:"));

    // ALPN picks h2 for a client that offers it.
    let resp = tls::client(&pki.ca, None)
        .get(format!("{}/secure", up.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);

    // And HTTP/1.1 for one that doesn't.
    let h1 = tls::client_builder(&pki.ca, None)
        .http1_only()
        .build()
        .unwrap();
    let resp = h1.get(up.url()).send().await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);

    let reqs = up.wait_for(2).await;
    assert_eq!(reqs[0].path, "/secure");
    assert_eq!(reqs[0].version, Version::HTTP_2);
    assert_eq!(reqs[1].version, Version::HTTP_11);
    assert_eq!(up.handshake_failures(), 0);
}

#[tokio::test]
async fn tls_rejects_untrusted_certs() {
    let pki = Pki::new();
    // The server presents a self-signed certificate: a client trusting only our CA refuses.
    let up = Upstream::builder()
        .tls(pki.untrusted.server_config())
        .start()
        .await;
    let err = tls::client(&pki.ca, None)
        .get(up.url())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    assert_eq!(up.count(), 0);

    // A client trusting some other CA refuses our good server certificate too.
    let good = Upstream::builder()
        .tls_pem(&pki.server.cert_pem, &pki.server.key_pem)
        .start()
        .await;
    let other = Ca::new("some other ca");
    assert!(
        tls::client(&other, None)
            .get(good.url())
            .send()
            .await
            .is_err()
    );
    assert_eq!(good.count(), 0);
}

#[tokio::test]
async fn tls_client_certificates() {
    let pki = Pki::new();
    let up = Upstream::builder()
        .tls(pki.server.server_config_requiring(&pki.client_ca))
        .start()
        .await;

    let resp = tls::client(&pki.ca, Some(&pki.client))
        .get(up.url())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reqs = up.wait_for(1).await;
    assert_eq!(
        reqs[0].client_cert.as_deref(),
        Some(pki.client.cert_der().as_ref())
    );

    // No certificate, or one from the wrong CA: refused.
    assert!(
        tls::client(&pki.ca, None)
            .get(up.url())
            .send()
            .await
            .is_err()
    );
    let stranger = pki.ca.client_cert("stranger");
    assert!(
        tls::client(&pki.ca, Some(&stranger))
            .get(up.url())
            .send()
            .await
            .is_err()
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn pki_files_are_pem() {
    let pki = Pki::new();
    let files = pki.files();
    assert_eq!(files.len(), 8);
    for (path, pem) in &files {
        assert!(path.starts_with("certs/"));
        assert!(pem.starts_with("-----BEGIN "), "{path}");
    }
    assert!(pki.client.identity_pem().contains("PRIVATE KEY"));
}

// === the process harness, against a stand-in for weir ===

/// A shell script that behaves like weir's CLI surface: prints the ready lines on stdout,
/// logs to stderr, and stays up (or fails, for `check`).
fn fake_weir(dir: &std::path::Path, script: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-weir");
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn harness_starts_waits_and_captures() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = fake_weir(
        bin_dir.path(),
        r#"echo "booting $1 $2" >&2
cat "$(dirname "$2")/certs/extra.txt" >&2
echo "weir listening on 127.0.0.1:4321"
sleep 0.2
echo "weir admin on 127.0.0.1:4322"
echo "ready" >&2
exec sleep 60
"#,
    );
    let config = "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n";
    let mut weir = WeirBuilder::new(config)
        .binary(&bin)
        .file("certs/extra.txt", "extra file content\n")
        .start()
        .await;
    // Waited for the admin line, since the config has [admin].
    assert_eq!(weir.addr().to_string(), "127.0.0.1:4321");
    assert_eq!(weir.url("x?y=1"), "http://127.0.0.1:4321/x?y=1");
    assert_eq!(weir.admin_url("/metrics"), "http://127.0.0.1:4322/metrics");
    assert_eq!(std::fs::read_to_string(weir.config_path()).unwrap(), config);
    weir.wait_for_log("ready", Duration::from_secs(10)).await;
    let logs = weir.logs();
    assert!(logs.contains("booting run "), "{logs}");
    assert!(logs.contains("weir.toml"), "{logs}");
    assert!(logs.contains("extra file content"), "{logs}");
    assert!(weir.stdout().contains("weir listening on"));
    assert!(weir.peak_rss_bytes() > 0);
    assert!(weir.is_running());

    let mark = weir.log_mark();
    weir.write_file("weir.toml", "changed");
    assert_eq!(
        std::fs::read_to_string(weir.dir().join("weir.toml")).unwrap(),
        "changed"
    );
    weir.signal("TERM");
    let status = weir.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    assert_eq!(weir.log_mark(), mark);
    weir.kill();
}

#[tokio::test]
async fn harness_reports_a_failed_start() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = fake_weir(
        bin_dir.path(),
        "echo 'error: weir.toml:3:1: unknown field `adr`' >&2\nexit 2\n",
    );
    let started = Instant::now();
    let err = WeirBuilder::new("[listen]\nadr = 1\n")
        .binary(&bin)
        .try_start()
        .await
        .err()
        .expect("the fake exits before listening");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(err.exit_code(), Some(2));
    assert!(err.stderr.contains("unknown field `adr`"), "{err}");
    assert!(err.to_string().contains("before it was listening"), "{err}");
}

#[tokio::test]
async fn harness_times_out_without_the_ready_line() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = fake_weir(bin_dir.path(), "echo 'stuck' >&2\nexec sleep 60\n");
    let err = WeirBuilder::new("")
        .binary(&bin)
        .startup_timeout(Duration::from_millis(500))
        .try_start()
        .await
        .err()
        .expect("the fake never listens");
    assert_eq!(err.exit, None, "killed by the harness, not exited");
    assert!(err.stderr.contains("stuck"), "{err}");
}

#[test]
fn harness_runs_check() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = fake_weir(
        bin_dir.path(),
        "echo \"$1 $(cat \"$2\")\"\necho 'a.wasm: missing' >&2\nexit 3\n",
    );
    let (code, stdout, stderr) = WeirBuilder::new("the config")
        .binary(&bin)
        .file("a.wasm", b"\0asm")
        .check();
    assert_eq!(code, 3);
    assert_eq!(stdout.trim(), "check the config");
    assert_eq!(stderr.trim(), "a.wasm: missing");
}
