//! Who may place and read orders (docs/failure-catalog.md §1, JWT validation): every order
//! route takes a bearer JWT verified against the issuer's JWKS; each bad token is a 401 that says
//! why and writes nothing; scopes and the customer claim decide what a caller may do; another
//! customer's order is a 404, never a 403; the rate limit keys on the token's subject.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use orderflow_order_api::{ApiSettings, auth::JwksSource};
use orderflow_tests::{
    TestDatabase,
    intake::{TestApi, TestIssuer, client_with, sample_order},
};
use orderflow_tools::issuer::{SigningKey, jwks};
use serde_json::{Value, json};

async fn post(api: &TestApi, client: &reqwest::Client, key: &str, body: &Value) -> reqwest::Response {
    client.post(format!("{}/orders", api.url)).header("Idempotency-Key", key).json(body).send().await.unwrap()
}

/// `(status, detail, www-authenticate)` of a refusal.
async fn refusal(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let challenge =
        response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body: Value = response.json().await.unwrap();
    (status, body["detail"].as_str().unwrap().to_string(), challenge)
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn every_bad_token_is_a_401_that_says_why_and_writes_nothing() {
    let api = TestApi::spawn().await;
    let good = TestIssuer::grant("checkout", "orders:write");
    let kid = api.issuer.key.kid.clone();
    let now = chrono::Utc::now().timestamp();
    let claims = good.claims();
    let with = |change: Value| {
        let mut claims = good.claims();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        api.issuer.key.sign(&claims)
    };
    // An RSA key the issuer publishes, used as an HMAC "secret" (the classic confusion attack).
    let rsa = SigningKey::generate(Algorithm::RS256).unwrap();
    api.issuer.publish(&[&api.issuer.key, &rsa]);
    let rsa_public = serde_json::to_vec(rsa.jwk()).unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(rsa.kid.clone());
    let hs256 = jsonwebtoken::encode(&hs_header, &claims, &EncodingKey::from_secret(&rsa_public)).unwrap();
    let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let forged = {
        let token = stranger.sign(&claims);
        let (_, rest) = token.split_once('.').unwrap();
        format!("{}.{rest}", b64(&json!({"alg": "EdDSA", "typ": "JWT", "kid": kid})))
    };
    let mismatched = {
        let token = api.issuer.key.sign(&claims);
        let (_, rest) = token.split_once('.').unwrap();
        format!("{}.{rest}", b64(&json!({"alg": "RS256", "typ": "JWT", "kid": kid})))
    };
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})), b64(&claims));
    let no_kid = {
        let token = api.issuer.key.sign(&claims);
        let (_, rest) = token.split_once('.').unwrap();
        format!("{}.{rest}", b64(&json!({"alg": "EdDSA", "typ": "JWT"})))
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, "Authorization: Bearer"),
        ("basic auth", Some("Basic dXNlcjpwYXNz".into()), "must be `Bearer <token>`"),
        ("not a JWT", Some("Bearer abc.def".into()), "not a JWT"),
        ("alg none", Some(format!("Bearer {none}")), "\"none\" are not accepted"),
        ("HS256 with the public key", Some(format!("Bearer {hs256}")), "\"HS256\" are not accepted"),
        ("no kid", Some(format!("Bearer {no_kid}")), "no `kid`"),
        ("unknown kid", Some(format!("Bearer {}", stranger.sign(&claims))), "no key"),
        ("forged signature", Some(format!("Bearer {forged}")), "signature does not verify"),
        ("alg not the key's", Some(format!("Bearer {mismatched}")), "is not its key's"),
        ("expired", Some(format!("Bearer {}", with(json!({"exp": now - 3600})))), "expired"),
        ("not yet valid", Some(format!("Bearer {}", with(json!({"nbf": now + 3600})))), "not valid yet"),
        ("wrong issuer", Some(format!("Bearer {}", with(json!({"iss": "someone-else"})))), "issuer"),
        ("wrong audience", Some(format!("Bearer {}", with(json!({"aud": "another-api"})))), "audience"),
        ("no subject", Some(format!("Bearer {}", with(json!({"sub": null})))), "\"sub\""),
        ("no expiry", Some(format!("Bearer {}", with(json!({"exp": null})))), "\"exp\""),
    ];
    let plain = orderflow_tests::http();
    for (i, (case, header, reason)) in cases.into_iter().enumerate() {
        for get in [false, true] {
            let mut request = if get {
                plain.get(format!("{}/orders/{}", api.url, uuid::Uuid::new_v4()))
            } else {
                plain
                    .post(format!("{}/orders", api.url))
                    .header("Idempotency-Key", format!("k{i}"))
                    .json(&sample_order("c"))
            };
            if let Some(header) = &header {
                request = request.header("Authorization", header);
            }
            let (status, detail, challenge) = refusal(request.send().await.unwrap()).await;
            assert_eq!(status, 401, "{case}: {detail}");
            assert!(detail.contains(reason), "{case}: {detail:?} should say {reason:?}");
            assert!(challenge.starts_with("Bearer realm=\"orderflow\""), "{case}: {challenge}");
        }
    }
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 0);
    assert_eq!(api.count("SELECT count(*) FROM outbox").await, 0);
    // The one valid token of them all is accepted.
    let client = client_with(&with(json!({})));
    assert_eq!(post(&api, &client, "ok", &sample_order("c")).await.status(), 202);
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_are_accepted_and_a_rotation_needs_no_restart() {
    let db = TestDatabase::create().await;
    let api = TestApi::spawn_authenticating(db, ApiSettings::default(), |auth| {
        auth.refresh = Duration::from_secs(1);
        auth.min_refresh = Duration::ZERO;
    })
    .await;
    let keys: Vec<SigningKey> =
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA].map(|a| SigningKey::generate(a).unwrap()).into();
    let grant = TestIssuer::grant("checkout", "orders:write");
    // A new key is used as soon as it is published: its unknown kid makes order-api re-read.
    api.issuer.publish(&keys.iter().collect::<Vec<_>>());
    for (i, key) in keys.iter().enumerate() {
        let response = post(&api, &client_with(&key.sign(&grant.claims())), &format!("k{i}"), &sample_order("c")).await;
        assert_eq!(response.status(), 202, "{:?}: {}", key.algorithm, response.text().await.unwrap());
    }
    // A key taken out of the set stops working within the refresh period, without a restart.
    api.issuer.publish(&[&keys[1]]);
    let retired = client_with(&keys[0].sign(&grant.claims()));
    orderflow_tests::intake::eventually(Duration::from_secs(10), "the retired key refused", || async {
        post(&api, &retired, "after", &sample_order("c")).await.status() == 401
    })
    .await;
    assert_eq!(
        post(&api, &client_with(&keys[1].sign(&grant.claims())), "kept", &sample_order("c")).await.status(),
        202
    );
}

#[tokio::test]
async fn a_jwks_url_is_read_on_an_unknown_kid_but_made_up_kids_cannot_hammer_the_issuer() {
    let key = SigningKey::generate(Algorithm::ES256).unwrap();
    let set = Arc::new(std::sync::Mutex::new(jwks(&[&key])));
    let reads = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
    let (s, r) = (set.clone(), reads.clone());
    let routes = axum::Router::new().route(
        "/.well-known/jwks.json",
        axum::routing::get(move || {
            let (s, r) = (s.clone(), r.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                axum::Json(s.lock().unwrap().clone())
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, routes).await });
    let jwks_url = url.clone();
    let min_refresh = Duration::from_millis(300);
    let api = TestApi::spawn_authenticating(TestDatabase::create().await, ApiSettings::default(), move |auth| {
        auth.jwks = JwksSource::Url(jwks_url);
        auth.min_refresh = min_refresh;
    })
    .await;
    let grant = TestIssuer::grant("checkout", "orders:write");
    assert_eq!(post(&api, &client_with(&key.sign(&grant.claims())), "a", &sample_order("c")).await.status(), 202);
    // A key the issuer adds is fetched when a token first names it.
    let added = SigningKey::generate(Algorithm::RS256).unwrap();
    *set.lock().unwrap() = jwks(&[&key, &added]);
    tokio::time::sleep(min_refresh + Duration::from_millis(100)).await;
    let before = reads.load(Ordering::SeqCst);
    assert_eq!(post(&api, &client_with(&added.sign(&grant.claims())), "b", &sample_order("c")).await.status(), 202);
    assert_eq!(reads.load(Ordering::SeqCst), before + 1);
    // Fifty tokens with made-up kids: each is refused, and the issuer is asked at most once per
    // min_refresh however fast they come.
    let (before, started) = (reads.load(Ordering::SeqCst), std::time::Instant::now());
    for i in 0..50 {
        let stranger = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let (status, detail, _) = refusal(
            post(&api, &client_with(&stranger.sign(&grant.claims())), &format!("s{i}"), &sample_order("c")).await,
        )
        .await;
        assert_eq!((status, detail.contains("no key")), (401, true), "{detail}");
    }
    let allowed = 1 + (started.elapsed().as_millis() / min_refresh.as_millis()) as usize;
    let made = reads.load(Ordering::SeqCst) - before;
    assert!(made <= allowed, "{made} reads for 50 unknown kids in {:?}", started.elapsed());
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 2);
}

#[tokio::test]
async fn scopes_and_the_customer_claim_decide_and_another_customers_order_is_a_404() {
    let api = TestApi::spawn().await;
    let token = |subject: &str, scope: &str, customer: Option<&str>| {
        let mut grant = TestIssuer::grant(subject, scope);
        grant.customer_id = customer.map(str::to_string);
        client_with(&api.issuer.token(&grant))
    };
    let reader = token("support", "orders:read", None);
    let alice = token("web-alice", "orders:write", Some("alice"));
    let bob = token("web-bob", "orders:write", Some("bob"));
    let writer_only = token("checkout", "orders:write", None);

    let (status, detail, challenge) = refusal(post(&api, &reader, "r", &sample_order("alice")).await).await;
    assert_eq!(status, 403, "{detail}");
    assert!(detail.contains("orders:write"), "{detail}");
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    let (status, detail, _) = refusal(post(&api, &alice, "a-for-bob", &sample_order("bob")).await).await;
    assert_eq!(status, 403, "{detail}");
    assert!(detail.contains("\"alice\""), "{detail}");
    assert_eq!(api.count("SELECT count(*) FROM orders").await, 0);

    let placed = post(&api, &alice, "a", &sample_order("alice")).await;
    assert_eq!(placed.status(), 202);
    let id = placed.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_string();
    let base = api.url.clone();
    let read = |client: reqwest::Client, path: String| {
        let url = format!("{base}{path}");
        async move { client.get(url).send().await.unwrap() }
    };
    let path = format!("/orders/{id}");
    assert_eq!(read(alice.clone(), path.clone()).await.status(), 200);
    assert_eq!(read(reader.clone(), path.clone()).await.status(), 200);
    // Not hers, not allowed to read others': exactly what a missing order looks like.
    let missing = refusal(read(bob.clone(), format!("/orders/{}", uuid::Uuid::new_v4())).await).await;
    for client in [bob, writer_only] {
        let (status, detail, _) = refusal(read(client.clone(), path.clone()).await).await;
        assert_eq!(status, 404);
        assert_eq!(detail.replace(&id, "ID"), missing.1.replace(missing.1.rsplit(' ').next().unwrap(), "ID"));
        let waited = read(client, format!("{path}?wait_for=PAID&timeout=1s")).await;
        assert_eq!(waited.status(), 404);
    }
}

#[tokio::test]
async fn the_rate_limit_follows_the_tokens_subject_not_a_header_the_caller_sets() {
    let api = TestApi::spawn_with(ApiSettings { client_rate: 1.0, client_burst: 2.0, ..Default::default() }).await;
    let alice = client_with(&api.issuer.token(&TestIssuer::grant("alice", "orders:write")));
    for i in 0..2 {
        assert_eq!(post(&api, &alice, &format!("r{i}"), &sample_order("c")).await.status(), 202);
    }
    // A new X-Client-Id on every request changes nothing: the subject is the same.
    let limited = alice
        .post(format!("{}/orders", api.url))
        .header("Idempotency-Key", "r2")
        .header("X-Client-Id", uuid::Uuid::new_v4().to_string())
        .json(&sample_order("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let bob = client_with(&api.issuer.token(&TestIssuer::grant("bob", "orders:write")));
    assert_eq!(post(&api, &bob, "b", &sample_order("c")).await.status(), 202);
}

#[tokio::test]
async fn a_flood_of_distinct_subjects_is_answered_and_the_limiter_remembers_a_bounded_number() {
    let api = TestApi::spawn_with(ApiSettings {
        client_rate: 1.0,
        client_burst: 1.0,
        rate_limit_callers: 64,
        ..Default::default()
    })
    .await;
    let mut answers = std::collections::BTreeMap::new();
    let plain = orderflow_tests::http();
    for i in 0..400 {
        let token = api.issuer.token(&TestIssuer::grant(&format!("subject-{i}"), "orders:read"));
        let request = plain.get(format!("{}/orders/{}", api.url, uuid::Uuid::new_v4())).bearer_auth(token);
        let status = request.send().await.unwrap().status();
        *answers.entry(status.as_u16()).or_insert(0) += 1;
    }
    // Each got an answer: its own bucket (404, no such order) or the shared overflow's (429).
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), vec![404, 429], "{answers:?}");
    let metrics = api.get("/metrics").await.text().await.unwrap();
    let remembered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orderflow_api_rate_limited_callers "))
        .expect("the callers gauge")
        .parse()
        .unwrap();
    assert!(remembered > 0.0 && remembered <= 64.0, "{remembered} callers remembered");
}

#[tokio::test]
async fn an_idempotency_key_is_its_callers_own_and_a_key_from_before_the_upgrade_still_replays() {
    let db = TestDatabase::create().await;
    let (name, url) = (db.name.clone(), db.url.clone());
    let api = TestApi::spawn_on(db, ApiSettings::default()).await;
    let caller = |subject: &str| client_with(&api.issuer.token(&TestIssuer::grant(subject, "orders:write")));
    let (alice, bob) = (caller("shop-a"), caller("shop-b"));
    let order_of = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 202);
        let replayed = response.headers().get("idempotent-replayed").is_some();
        (response.json::<Value>().await.unwrap()["order_id"].as_str().unwrap().to_string(), replayed)
    };
    let (first, _) = order_of(post(&api, &alice, "shared-key", &sample_order("c")).await).await;
    // Another caller's key of the same name is another order, not a replay of Alice's.
    let (other, replayed) = order_of(post(&api, &bob, "shared-key", &sample_order("c")).await).await;
    assert_ne!(other, first);
    assert!(!replayed);
    assert_eq!(order_of(post(&api, &alice, "shared-key", &sample_order("c")).await).await, (first.clone(), true));
    assert_eq!(post(&api, &bob, "shared-key", &sample_order("d")).await.status(), 422);

    // Alice's order as if accepted before keys had callers: after a restart, her retry with the
    // key (whatever the token's subject) still gets that order, once.
    sqlx::query("UPDATE orders SET caller = '' WHERE order_id = $1::uuid")
        .bind(&first)
        .execute(&api.pool)
        .await
        .unwrap();
    let restarted = TestApi::spawn_on(TestDatabase { name, url }, ApiSettings::default()).await;
    let retry = client_with(&restarted.issuer.token(&TestIssuer::grant("shop-a-v2", "orders:write")));
    assert_eq!(order_of(post(&restarted, &retry, "shared-key", &sample_order("c")).await).await, (first, true));
    assert_eq!(restarted.count("SELECT count(*) FROM orders").await, 2);
}
