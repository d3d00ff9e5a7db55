//! Signed webhooks (W1, W2): endpoints per namespace, deliveries signed the
//! Standard Webhooks way, retried with backoff until one is accepted, every
//! attempt logged, replayed with the same event id, endpoints that keep
//! failing (or answer 410) disabled with an event, events of the namespace
//! delivered once each, and no delivery sent twice by two instances.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tally_common::{
    ErrorCode, WebhookDelivery, WebhookDeliveryDetail, WebhookDeliveryPage, WebhookEndpoint,
    WebhookEndpointList, WebhookEndpointWithSecret,
};
use tally_server::services::webhooks::verify;

use crate::billing::events_of_kind;
use crate::helpers::{
    assert_error, backend_tests, eventually, json, postgres_enabled, spawn_with, start,
    test_settings, Backend, TallyProcess, TestApp, TestDatabase, User,
};

backend_tests!(
    a_failing_receiver_gets_one_accepted_signed_delivery_after_backoff_and_replay_resends_it,
    a_low_balance_crossing_and_an_expiring_key_each_make_one_delivery_to_subscribers,
    endpoints_are_checked_whole_kept_to_their_namespace_and_rotated_with_both_signatures,
    an_endpoint_that_answers_410_or_keeps_failing_is_disabled_with_an_event,
    a_used_up_quota_is_reported_once_per_key_and_period,
    a_pending_delivery_survives_kill_9_and_goes_out_once_after_the_restart,
);

/// One request a receiver got, and what it answered.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    id: String,
    timestamp: i64,
    signature: String,
    pub(crate) body: String,
    answered: u16,
}

pub(crate) struct Receiver {
    pub(crate) url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub(crate) fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// A receiver on loopback answering the `n`th request (from 0) with
/// `answer(n)`.
pub(crate) fn receiver(answer: impl Fn(usize) -> u16 + Send + Sync + Clone + 'static) -> Receiver {
    slow_receiver(move |n| (answer(n), 0))
}

/// A receiver answering the `n`th request with the status of `answer(n)`
/// after the milliseconds it gives (the request is recorded on arrival).
fn slow_receiver(answer: impl Fn(usize) -> (u16, u64) + Send + Sync + Clone + 'static) -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let shared = got.clone();
    let server = HttpServer::new(move || {
        let got = shared.clone();
        let answer = answer.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let got = got.clone();
            let answer = answer.clone();
            async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let (status, delay) = {
                    let mut got = got.lock().unwrap();
                    let (status, delay) = answer(got.len());
                    got.push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp").parse().unwrap_or(0),
                        signature: header("webhook-signature"),
                        body: String::from_utf8_lossy(&body).into_owned(),
                        answered: status,
                    });
                    (status, delay)
                };
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
                    .body(format!("answer {status}"))
            }
        }))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    Receiver {
        url: format!("http://127.0.0.1:{port}/hooks"),
        got,
    }
}

/// Quick retries for tests: 1 s apart, no jitter, polled every 50 ms.
fn quick(s: &mut tally_server::config::Settings) {
    s.webhooks.retry_schedule_secs = vec![1, 1, 1, 1];
    s.webhooks.jitter = 0.0;
    s.webhooks.poll_interval_ms = 50;
    s.webhooks.timeout_secs = 5;
    s.billing.alert_check_interval_ms = 50;
}

async fn app(backend: Backend) -> TestApp {
    spawn_with(TestDatabase::new(backend).await, quick).await
}

fn ns(user: &User, rest: &str) -> String {
    format!("/api/v1/namespaces/{}{rest}", user.namespace_id)
}

async fn create(app: &TestApp, user: &User, body: Value) -> WebhookEndpointWithSecret {
    json(
        app.post(&ns(user, "/webhooks"), Some(&user.token), body)
            .await,
        StatusCode::CREATED,
    )
    .await
}

async fn deliveries(app: &TestApp, user: &User, query: &str) -> Vec<WebhookDelivery> {
    let page: WebhookDeliveryPage = json(
        app.get(
            &ns(user, &format!("/webhook-deliveries{query}")),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    page.items
}

async fn detail(app: &TestApp, user: &User, id: &str) -> WebhookDeliveryDetail {
    json(
        app.get(
            &ns(user, &format!("/webhook-deliveries/{id}")),
            Some(&user.token),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

async fn until_finished(app: &TestApp, user: &User, id: &str, secs: u64) -> WebhookDeliveryDetail {
    eventually(secs, "the delivery finishes", || async {
        detail(app, user, id).await.delivery.status != "pending"
    })
    .await;
    detail(app, user, id).await
}

async fn a_failing_receiver_gets_one_accepted_signed_delivery_after_backoff_and_replay_resends_it(
    backend: Backend,
) {
    let app = app(backend).await;
    let user = app.signup("hooks").await;
    let rx = receiver(|n| if n < 2 { 500 } else { 200 });
    let made = create(&app, &user, json!({"url": rx.url, "description": "ops"})).await;
    assert!(made.secret.starts_with("whsec_"), "{}", made.secret);
    let sent: WebhookDelivery = json(
        app.post(
            &ns(&user, &format!("/webhooks/{}/test", made.endpoint.id)),
            Some(&user.token),
            json!({}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(sent.event_type, "webhook.test");

    let done = until_finished(&app, &user, &sent.id, 20).await;
    assert_eq!(done.delivery.status, "succeeded");
    assert_eq!(done.delivery.attempts, 3);
    assert_eq!(done.delivery.last_status, Some(200));
    let statuses: Vec<Option<i64>> = done.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(statuses, vec![Some(500), Some(500), Some(200)]);
    assert!(done.attempts[2].succeeded && !done.attempts[0].succeeded);
    assert_eq!(done.attempts[0].response_excerpt, "answer 500");

    // Three requests, one accepted, all with the same id and a valid
    // signature of their own timestamp over the exact body, a second or
    // more apart (the backoff).
    let got = rx.got();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got.iter().filter(|r| r.answered == 200).count(), 1);
    for r in &got {
        assert_eq!(r.id, sent.message_id);
        assert!(
            verify(&made.secret, &r.id, r.timestamp, &r.body, &r.signature),
            "signature {} of {}",
            r.signature,
            r.body
        );
        assert!(!verify(
            &made.secret,
            &r.id,
            r.timestamp + 1,
            &r.body,
            &r.signature
        ));
        assert_eq!(r.body, done.payload);
    }
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["id"], sent.message_id);
    assert_eq!(body["type"], "webhook.test");
    assert_eq!(body["namespace_id"], user.namespace_id);
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(&done.attempts[i].attempted_at)
            .unwrap()
            .timestamp_millis()
    };
    assert!(
        at(1) - at(0) >= 900 && at(2) - at(1) >= 900,
        "{:?}",
        done.attempts
    );

    // A replay is a new delivery of the same event id.
    let replayed: WebhookDelivery = json(
        app.post(
            &ns(&user, &format!("/webhook-deliveries/{}/replay", sent.id)),
            Some(&user.token),
            json!({}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_ne!(replayed.id, sent.id);
    assert_eq!(replayed.message_id, sent.message_id);
    let again = until_finished(&app, &user, &replayed.id, 10).await;
    assert_eq!(
        (again.delivery.status.as_str(), again.delivery.attempts),
        ("succeeded", 1)
    );
    let got = rx.got();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].id, sent.message_id);
    assert!(verify(
        &made.secret,
        &got[3].id,
        got[3].timestamp,
        &got[3].body,
        &got[3].signature
    ));
    let listed = deliveries(&app, &user, "").await;
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, replayed.id, "newest first");
}

async fn a_low_balance_crossing_and_an_expiring_key_each_make_one_delivery_to_subscribers(
    backend: Backend,
) {
    let app = app(backend).await;
    let user = app.signup("alerts").await;
    let rx = receiver(|_| 204);
    let other = receiver(|_| 204);
    let low = create(
        &app,
        &user,
        json!({"url": rx.url, "event_types": ["credits.low_balance", "key.expiring"]}),
    )
    .await;
    create(
        &app,
        &user,
        json!({"url": other.url, "event_types": ["topup.confirmed"]}),
    )
    .await;
    // Another namespace's endpoint hears nothing of this one.
    let stranger = app.signup("stranger").await;
    let theirs = receiver(|_| 204);
    create(&app, &stranger, json!({"url": theirs.url})).await;

    let balances: Value = json(
        app.get(&ns(&user, "/credits"), Some(&user.token)).await,
        StatusCode::OK,
    )
    .await;
    let test_balance = balances.to_string();
    let res = app
        .client
        .put(app.url(&ns(&user, "/credits/alerts/test")))
        .bearer_auth(&user.token)
        .json(&json!({"threshold_micros": 1_000_000_000_000i64}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{test_balance}");
    let expires = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let res = app
        .post(
            &ns(&user, "/keys"),
            Some(&user.token),
            json!({"name": "short-lived", "environment": "test", "expires_at": expires}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let far = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let res = app
        .post(
            &ns(&user, "/keys"),
            Some(&user.token),
            json!({"name": "long-lived", "environment": "test", "expires_at": far}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);

    eventually(10, "two deliveries arrive", || async {
        rx.got().len() >= 2
    })
    .await;
    // More upkeep rounds send nothing more.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = rx.got();
    assert_eq!(got.len(), 2, "{got:?}");
    let mut types: Vec<String> = got
        .iter()
        .map(|r| {
            let b: Value = serde_json::from_str(&r.body).unwrap();
            assert!(verify(
                &low.secret,
                &r.id,
                r.timestamp,
                &r.body,
                &r.signature
            ));
            if b["type"] == "credits.low_balance" {
                assert_eq!(b["data"]["threshold_micros"], 1_000_000_000_000i64);
                assert_eq!(b["environment"], "test");
            } else {
                assert_eq!(b["data"]["name"], "short-lived");
            }
            b["type"].as_str().unwrap().to_owned()
        })
        .collect();
    types.sort();
    assert_eq!(types, vec!["credits.low_balance", "key.expiring"]);
    assert!(other.got().is_empty(), "not subscribed");
    assert!(theirs.got().is_empty(), "another namespace");
    assert_eq!(events_of_kind(&app, &user, "key.expiring").await.len(), 1);
    let listed = deliveries(&app, &user, "?status=succeeded").await;
    assert_eq!(listed.len(), 2);
    assert!(deliveries(&app, &stranger, "").await.is_empty());
}

async fn endpoints_are_checked_whole_kept_to_their_namespace_and_rotated_with_both_signatures(
    backend: Backend,
) {
    let app = app(backend).await;
    let owner = app.signup("owner").await;
    let viewer = app.signup("viewer").await;
    app.add_member(&owner, &viewer, "viewer").await;
    let stranger = app.signup("stranger").await;
    let rx = receiver(|_| 200);
    for bad in [
        json!({"url": "ftp://example.com/x"}),
        json!({"url": "http://:80/hooks"}),
        json!({"url": "https://example.com/x#frag"}),
        json!({"url": "not a url"}),
        json!({"url": format!("https://example.com/{}", "a".repeat(3000))}),
        json!({"url": rx.url, "event_types": ["no.such.type"]}),
        json!({"url": rx.url, "event_types": ["key.expiring", "key.expiring"]}),
        json!({"url": rx.url, "description": "bell\u{7}"}),
        json!({"url": rx.url, "secret": "mine"}),
    ] {
        let res = app
            .post(&ns(&owner, "/webhooks"), Some(&owner.token), bad.clone())
            .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let res = app
        .post(
            &ns(&owner, "/webhooks"),
            Some(&owner.token),
            json!({"url": "http://169.254.169.254/latest"}),
        )
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::UpstreamNotAllowed).await;
    // By default a server refuses webhook URLs into non-public networks.
    let strict = spawn_with(TestDatabase::new(backend).await, |s| {
        s.webhooks.allow_private = false;
    })
    .await;
    let dev = strict.signup("dev").await;
    for url in [
        rx.url.as_str(),
        "http://10.1.2.3/hook",
        "http://[::1]:8080/hook",
        "http://192.168.0.10/hook",
    ] {
        let res = strict
            .post(
                &ns(&dev, "/webhooks"),
                Some(&dev.token),
                json!({"url": url}),
            )
            .await;
        assert_error(res, StatusCode::BAD_REQUEST, ErrorCode::UpstreamNotAllowed).await;
    }
    create(
        &strict,
        &dev,
        json!({"url": "https://hooks.example.com/tally"}),
    )
    .await;
    let res = app
        .post(
            &ns(&owner, "/webhooks"),
            Some(&viewer.token),
            json!({"url": rx.url}),
        )
        .await;
    assert_error(res, StatusCode::FORBIDDEN, ErrorCode::Forbidden).await;
    let made = create(
        &app,
        &owner,
        json!({"url": rx.url, "event_types": ["webhook.test"]}),
    )
    .await;
    let id = made.endpoint.id.clone();

    // Members see it without its secret; other namespaces do not see it.
    let list: WebhookEndpointList = json(
        app.get(&ns(&owner, "/webhooks"), Some(&viewer.token)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list.items.len(), 1);
    assert!(!serde_json::to_string(&list).unwrap().contains(&made.secret));
    assert!(list.event_types.contains(&"credits.low_balance".to_owned()));
    let path = format!("/api/v1/namespaces/{}/webhooks/{id}", owner.namespace_id);
    for res in [
        app.get(&path, Some(&stranger.token)).await,
        app.get(
            &ns(&stranger, &format!("/webhooks/{id}")),
            Some(&stranger.token),
        )
        .await,
        app.patch(
            &ns(&stranger, &format!("/webhooks/{id}")),
            &stranger.token,
            json!({"enabled": false}),
        )
        .await,
        app.post(
            &ns(&stranger, &format!("/webhooks/{id}/test")),
            Some(&stranger.token),
            json!({}),
        )
        .await,
        app.post(
            &ns(&stranger, &format!("/webhooks/{id}/rotate")),
            Some(&stranger.token),
            json!({}),
        )
        .await,
        app.delete(&ns(&stranger, &format!("/webhooks/{id}")), &stranger.token)
            .await,
    ] {
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }

    // A change with one bad field changes nothing.
    let res = app
        .patch(
            &path,
            &owner.token,
            json!({"description": "new", "url": "ftp://x"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let same: WebhookEndpoint =
        json(app.get(&path, Some(&owner.token)).await, StatusCode::OK).await;
    assert_eq!(same.description, "");

    // After a rotation both secrets sign until the grace ends.
    let rotated: WebhookEndpointWithSecret = json(
        app.post(
            &format!("{path}/rotate"),
            Some(&owner.token),
            json!({"grace_seconds": 3600}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_ne!(rotated.secret, made.secret);
    assert!(rotated.endpoint.previous_secret_expires_at.is_some());
    let sent: WebhookDelivery = json(
        app.post(&format!("{path}/test"), Some(&owner.token), json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    until_finished(&app, &owner, &sent.id, 10).await;
    let r = rx.got().pop().unwrap();
    assert_eq!(r.signature.split(' ').count(), 2, "{}", r.signature);
    assert!(verify(
        &rotated.secret,
        &r.id,
        r.timestamp,
        &r.body,
        &r.signature
    ));
    assert!(verify(
        &made.secret,
        &r.id,
        r.timestamp,
        &r.body,
        &r.signature
    ));
    // The stranger cannot read or replay the delivery either.
    for res in [
        app.get(
            &ns(&stranger, &format!("/webhook-deliveries/{}", sent.id)),
            Some(&stranger.token),
        )
        .await,
        app.post(
            &ns(
                &stranger,
                &format!("/webhook-deliveries/{}/replay", sent.id),
            ),
            Some(&stranger.token),
            json!({}),
        )
        .await,
    ] {
        assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    }

    // A rotation with no grace: only the new secret signs.
    let again: WebhookEndpointWithSecret = json(
        app.post(
            &format!("{path}/rotate"),
            Some(&owner.token),
            json!({"grace_seconds": 0}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(again.endpoint.previous_secret_expires_at.is_none());
    let sent: WebhookDelivery = json(
        app.post(&format!("{path}/test"), Some(&owner.token), json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    until_finished(&app, &owner, &sent.id, 10).await;
    let r = rx.got().pop().unwrap();
    assert_eq!(r.signature.split(' ').count(), 1);
    assert!(verify(
        &again.secret,
        &r.id,
        r.timestamp,
        &r.body,
        &r.signature
    ));
    assert!(!verify(
        &rotated.secret,
        &r.id,
        r.timestamp,
        &r.body,
        &r.signature
    ));

    // Disabled: no test; deleted: gone.
    let off: WebhookEndpoint = json(
        app.patch(&path, &owner.token, json!({"enabled": false}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(!off.enabled);
    let res = app
        .post(&format!("{path}/test"), Some(&owner.token), json!({}))
        .await;
    assert_error(res, StatusCode::CONFLICT, ErrorCode::Conflict).await;
    let res = app.delete(&path, &owner.token).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = app.get(&path, Some(&owner.token)).await;
    assert_error(res, StatusCode::NOT_FOUND, ErrorCode::NotFound).await;
    assert!(deliveries(&app, &owner, "").await.is_empty());
}

async fn an_endpoint_that_answers_410_or_keeps_failing_is_disabled_with_an_event(backend: Backend) {
    let app = spawn_with(TestDatabase::new(backend).await, |s| {
        quick(s);
        s.webhooks.retry_schedule_secs = vec![1; 10];
        s.webhooks.disable_after_secs = 2;
    })
    .await;
    let user = app.signup("gone").await;
    let gone = receiver(|_| 410);
    let made = create(&app, &user, json!({"url": gone.url})).await;
    let path = ns(&user, &format!("/webhooks/{}", made.endpoint.id));
    let sent: WebhookDelivery = json(
        app.post(&format!("{path}/test"), Some(&user.token), json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let done = until_finished(&app, &user, &sent.id, 10).await;
    assert_eq!(
        (done.delivery.status.as_str(), done.delivery.attempts),
        ("failed", 1)
    );
    let e: WebhookEndpoint = json(app.get(&path, Some(&user.token)).await, StatusCode::OK).await;
    assert!(!e.enabled);
    assert!(e.disabled_reason.unwrap().contains("410"));

    // Always 500: retried a second apart until the failures have lasted two
    // seconds, then disabled; the delivery stays pending and goes out when
    // the endpoint is enabled again and answers.
    let answers = Arc::new(Mutex::new(500u16));
    let answer = answers.clone();
    let flaky = receiver(move |_| *answer.lock().unwrap());
    let made = create(&app, &user, json!({"url": flaky.url})).await;
    let path = ns(&user, &format!("/webhooks/{}", made.endpoint.id));
    let sent: WebhookDelivery = json(
        app.post(&format!("{path}/test"), Some(&user.token), json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    eventually(15, "the failing endpoint is disabled", || async {
        let e: WebhookEndpoint =
            json(app.get(&path, Some(&user.token)).await, StatusCode::OK).await;
        !e.enabled
    })
    .await;
    assert_eq!(
        events_of_kind(&app, &user, "webhook.disabled").await.len(),
        2
    );
    let attempts = flaky.got().len();
    assert!(attempts >= 3, "{attempts}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        flaky.got().len(),
        attempts,
        "nothing goes to a disabled endpoint"
    );
    assert_eq!(
        detail(&app, &user, &sent.id).await.delivery.status,
        "pending"
    );
    *answers.lock().unwrap() = 200;
    let on: WebhookEndpoint = json(
        app.patch(&path, &user.token, json!({"enabled": true}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(on.enabled && on.failing_since.is_none() && on.disabled_reason.is_none());
    let done = until_finished(&app, &user, &sent.id, 10).await;
    assert_eq!(done.delivery.status, "succeeded");
}

/// Two instances on one PostgreSQL database share the deliveries: each goes
/// out exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_send_each_delivery_once() {
    if !postgres_enabled() {
        return;
    }
    let db = TestDatabase::new(Backend::Postgres).await;
    let mut settings = test_settings(&db);
    quick(&mut settings);
    let first = spawn_with(db, quick).await;
    let (_second, _) = start(settings).await;
    let user = first.signup("pair").await;
    let rx = receiver(|_| 200);
    let made = create(&first, &user, json!({"url": rx.url})).await;
    let path = ns(&user, &format!("/webhooks/{}/test", made.endpoint.id));
    for _ in 0..40 {
        let res = first.post(&path, Some(&user.token), json!({})).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    eventually(20, "40 deliveries arrive", || async {
        rx.got().len() >= 40
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.got();
    let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (40, 40));
}

async fn a_used_up_quota_is_reported_once_per_key_and_period(backend: Backend) {
    let app = app(backend).await;
    let user = app.signup("quota").await;
    let rx = receiver(|_| 200);
    let hook = create(
        &app,
        &user,
        json!({"url": rx.url, "event_types": ["quota.reached"]}),
    )
    .await;
    let key: tally_common::CreatedKey = json(
        app.post(
            &ns(&user, "/keys"),
            Some(&user.token),
            json!({"name": "two a day", "environment": "test", "limits": {"requests_per_day": 2}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key.secret)
            .json(&json!({"model": "tally-sandbox", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429, 429, 429, 429, 429, 429]);
    eventually(10, "the quota webhook arrives", || async {
        !rx.got().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.got();
    assert_eq!(got.len(), 1, "one report for six refusals: {got:?}");
    assert!(verify(
        &hook.secret,
        &got[0].id,
        got[0].timestamp,
        &got[0].body,
        &got[0].signature
    ));
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "quota.reached");
    assert_eq!(body["data"]["key_id"], key.key.id);
    assert_eq!(body["data"]["quota"], "daily request");
    assert_eq!(events_of_kind(&app, &user, "quota.reached").await.len(), 1);
}

/// A `tally serve` process on `db` that retries webhooks every second.
async fn process(db: &TestDatabase, name: &str) -> TallyProcess {
    let dir = db.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    TallyProcess::start(
        &db.url,
        &dir,
        Some(&db.dir.path().join(format!("{name}.log"))),
        &[
            ("TALLY_AUTH__IP_REQUESTS_PER_MINUTE", "0"),
            ("TALLY_AUTH__SIGNUPS_PER_IP_PER_HOUR", "0"),
            ("TALLY_AUTH__SIGNUPS_PER_EMAIL_PER_HOUR", "0"),
            ("TALLY_WEBHOOKS__ALLOW_PRIVATE", "true"),
            (
                "TALLY_WEBHOOKS__RETRY_SCHEDULE_SECS",
                "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]",
            ),
            ("TALLY_WEBHOOKS__JITTER", "0"),
            ("TALLY_WEBHOOKS__POLL_INTERVAL_MS", "50"),
            ("TALLY_WEBHOOKS__TIMEOUT_SECS", "2"),
        ],
    )
    .await
}

async fn a_pending_delivery_survives_kill_9_and_goes_out_once_after_the_restart(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    // The first attempt fails; the second is still waiting for its answer
    // when the server is killed; later ones are accepted.
    let rx = slow_receiver(|n| match n {
        0 => (503, 0),
        1 => (503, 5_000),
        _ => (200, 0),
    });
    let mut first = process(&db, "first").await;
    let client = reqwest::Client::new();
    let auth: Value = client
        .post(first.url("/api/v1/auth/signup"))
        .json(&json!({"email": crate::helpers::unique_email("kill"), "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = auth["access_token"].as_str().unwrap().to_owned();
    let me: Value = client
        .get(first.url("/api/v1/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ns = me["namespaces"][0]["id"].as_str().unwrap().to_owned();
    let made: WebhookEndpointWithSecret = client
        .post(first.url(&format!("/api/v1/namespaces/{ns}/webhooks")))
        .bearer_auth(&token)
        .json(&json!({"url": rx.url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent: WebhookDelivery = client
        .post(first.url(&format!(
            "/api/v1/namespaces/{ns}/webhooks/{}/test",
            made.endpoint.id
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eventually(10, "a second attempt in flight", || async {
        rx.got().len() >= 2
    })
    .await;
    first.kill();
    let failed = rx.got().len();
    assert_eq!(failed, 2);

    // The next instance finds the delivery pending and, once the dead
    // instance's claim of one attempt's time has expired, sends it once.
    let second = process(&db, "second").await;
    let detail_url = second.url(&format!(
        "/api/v1/namespaces/{ns}/webhook-deliveries/{}",
        sent.id
    ));
    eventually(15, "the delivery succeeds after the restart", || async {
        let d: WebhookDeliveryDetail = client
            .get(&detail_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        d.delivery.status == "succeeded"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = rx.got();
    assert_eq!(
        got.iter().filter(|r| r.answered == 200).count(),
        1,
        "{got:?}"
    );
    assert_eq!(got.len(), failed + 1);
    assert!(got.iter().all(|r| r.id == sent.message_id));
    let d: WebhookDeliveryDetail = client
        .get(&detail_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // An attempt cut short by the kill may have reached the receiver
    // without being recorded.
    let recorded = d.delivery.attempts as usize;
    assert!(
        recorded == got.len() || recorded + 1 == got.len(),
        "{recorded} recorded of {} received",
        got.len()
    );
    drop(second);
}
