//! A scripted Kubernetes API for tests: every expected call in order, with
//! its answer; anything else fails the test.

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tokio::task::JoinHandle;

type BodyCheck = Box<dyn Fn(&Value) + Send>;

pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub answer: Value,
    /// Checks on the request body (JSON), when the call has one.
    pub check: Option<BodyCheck>,
}

impl Call {
    pub fn new(method: &'static str, path: impl Into<String>, status: u16, answer: Value) -> Self {
        Self {
            method,
            path: path.into(),
            status,
            answer,
            check: None,
        }
    }

    pub fn checking(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }
}

pub fn not_found() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

pub fn conflict() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"})
}

/// A client whose API is `calls`, and the task that serves them. Awaiting
/// the task (after dropping every clone of the client) checks that every
/// call happened and no other did, and returns the request bodies.
pub fn scripted(calls: Vec<Call>) -> (kube::Client, JoinHandle<Vec<Value>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for call in calls {
            let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                panic!("expected {} {} but no request came", call.method, call.path)
            });
            let path = request.uri().path().to_owned();
            assert_eq!(
                (request.method().as_str(), path.as_str()),
                (call.method, call.path.as_str()),
                "unexpected call (query {:?})",
                request.uri().query()
            );
            let bytes = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(check) = &call.check {
                check(&body);
            }
            bodies.push(body);
            let response = Response::builder()
                .status(call.status)
                .body(Body::from(serde_json::to_vec(&call.answer).expect("json")))
                .expect("response");
            send.send_response(response);
        }
        // Callers drop every client clone before awaiting: then no further call may come.
        if let Some((request, _)) = handle.next_request().await {
            panic!(
                "unexpected extra call {} {}",
                request.method(),
                request.uri()
            );
        }
        bodies
    });
    (kube::Client::new(service, "default"), server)
}
