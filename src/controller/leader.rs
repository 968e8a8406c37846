//! Leader election on a coordination.k8s.io/v1 Lease: every node agent reads
//! shadow Secrets, exactly one writes them.
//!
//! Expiry compares the holder's `renewTime` with this node's wall clock, so
//! nodes are assumed to be NTP-synchronised. A leader stops writing a third of
//! the lease duration before its lease could look expired to anyone else,
//! which absorbs clock skew and slow API calls smaller than that margin.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

/// Where the lease lives, who we are, and how often to act.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per agent (the pod name): two agents sharing one identity
    /// would both believe they lead.
    pub identity: String,
    /// How long a lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How often the leader renews; keep it well below two thirds of
    /// `lease_duration` so one failed attempt does not cost the lease.
    pub renew_interval: Duration,
    /// How often a follower looks again, and the pause after an error.
    pub retry_interval: Duration,
}

impl LeaseConfig {
    /// The client-go defaults: 15 s lease, renew every 5 s, retry every 2 s.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
        }
    }

    /// How long after its last successful write a leader may still act as
    /// one: it must have stepped down before others can take the lease over.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration - self.lease_duration / 3
    }

    fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }
}

/// What to do after reading the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is no lease yet.
    Create,
    /// We hold it.
    Renew,
    /// Nobody holds it, or the holder let it expire.
    TakeOver,
    /// Someone else holds a live lease.
    Follow {
        holder: String,
        expires_at: Timestamp,
    },
}

/// The election rule, free of I/O.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty());
    match holder {
        None => Decision::TakeOver,
        Some(holder) if holder == identity => Decision::Renew,
        Some(holder) => match spec.and_then(expiry) {
            Some(expires_at) if expires_at >= now => Decision::Follow {
                holder: holder.to_string(),
                expires_at,
            },
            // No renewTime means the holder never proved it is alive.
            _ => Decision::TakeOver,
        },
    }
}

fn expiry(spec: &LeaseSpec) -> Option<Timestamp> {
    let renewed = spec.renew_time.as_ref()?.0;
    // A missing or negative duration gives the holder no grace at all.
    let seconds = spec.lease_duration_seconds.unwrap_or(0).max(0);
    Some(
        renewed
            .checked_add(SignedDuration::from_secs(i64::from(seconds)))
            .unwrap_or(Timestamp::MAX),
    )
}

fn new_lease(config: &LeaseConfig, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.identity.clone()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_duration_seconds: Some(config.lease_duration_seconds()),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// The lease as we will write it. The read object's metadata, and with it its
/// resourceVersion, is kept so that the API server refuses the write if anyone
/// changed the lease since we read it.
fn claimed(current: &Lease, config: &LeaseConfig, now: Timestamp, takeover: bool) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if takeover {
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(config.lease_duration_seconds());
    lease
}

/// Our last lease, handed back: no holder and a one-second duration, so the
/// next agent takes over at its next look instead of waiting for expiry.
fn released(held: &Lease, now: Timestamp) -> Lease {
    let mut lease = held.clone();
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(1);
    lease
}

#[derive(Debug, Error)]
enum LeaseError {
    #[error("cannot read the lease: {0}")]
    Read(kube::Error),
    #[error("cannot create the lease: {0}")]
    Create(kube::Error),
    #[error("cannot update the lease: {0}")]
    Update(kube::Error),
}

enum Outcome {
    /// The API server accepted our write; this is what it stored.
    Leading(Box<Lease>),
    Following {
        holder: String,
        expires_at: Timestamp,
    },
    /// Another agent wrote between our read and our write.
    LostRace,
}

struct Held {
    lease: Lease,
    /// When we must stop acting as leader unless a renewal succeeds first.
    deadline: Instant,
}

struct Elector<C> {
    api: Api<Lease>,
    config: LeaseConfig,
    clock: C,
    leader: watch::Sender<bool>,
    held: Option<Held>,
}

/// Takes part in the election until `shutdown` completes, publishing on
/// `leader` whether this agent may write shadow Secrets. `true` is published
/// only after a successful write of the lease; `false` as soon as the lease
/// is lost, a renewal fails, or the renew deadline passes. On shutdown the
/// lease is released (best effort) after `false` is published.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) {
    run_with_clock(client, config, leader, shutdown, Timestamp::now).await;
}

async fn run_with_clock<C: Fn() -> Timestamp>(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
    clock: C,
) {
    let span = tracing::info_span!(
        "leader_election",
        lease = %format!("{}/{}", config.namespace, config.name),
        identity = %config.identity,
    );
    let mut elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
        clock,
        leader,
        held: None,
    };
    async move {
        tokio::pin!(shutdown);
        loop {
            let wait = tokio::select! {
                biased;
                () = &mut shutdown => break,
                wait = elector.round() => wait,
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        elector.release().await;
    }
    .instrument(span)
    .await;
}

impl<C: Fn() -> Timestamp> Elector<C> {
    /// One read-decide-write round; returns how long to wait before the next.
    async fn round(&mut self) -> Duration {
        // A leader's API calls may not outlive its deadline: a hung renewal
        // must not let it write past the point where others may take over.
        let limit = match &self.held {
            Some(held) => held.deadline,
            None => Instant::now() + self.config.lease_duration,
        };
        let started = Instant::now();
        match tokio::time::timeout_at(limit, self.attempt()).await {
            Ok(Ok(Outcome::Leading(lease))) => {
                let deadline = started + self.config.renew_deadline();
                if self.held.is_none() {
                    info!(holder = %self.config.identity, "acquired the lease");
                }
                self.held = Some(Held {
                    lease: *lease,
                    deadline,
                });
                self.publish(true);
                self.config
                    .renew_interval
                    .min(deadline.saturating_duration_since(Instant::now()))
            }
            Ok(Ok(Outcome::Following { holder, expires_at })) => {
                debug!(%holder, %expires_at, "another agent holds the lease");
                self.step_down("the lease is held by another agent");
                self.config.retry_interval
            }
            Ok(Ok(Outcome::LostRace)) => {
                debug!("another agent wrote the lease first");
                self.step_down("another agent wrote the lease first");
                self.config.retry_interval
            }
            Ok(Err(error)) => {
                warn!(%error, "lease round failed");
                self.step_down("the lease could not be renewed");
                self.config.retry_interval
            }
            Err(_) => {
                warn!("lease round timed out");
                self.step_down("the renew deadline passed");
                self.config.retry_interval
            }
        }
    }

    async fn attempt(&self) -> Result<Outcome, LeaseError> {
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(LeaseError::Read)?;
        let now = (self.clock)();
        let decision = decide(current.as_ref(), &self.config.identity, now);
        let (current, takeover) = match (decision, current) {
            (Decision::Follow { holder, expires_at }, _) => {
                return Ok(Outcome::Following { holder, expires_at })
            }
            (Decision::Create, _) | (_, None) => return self.create(now).await,
            (Decision::Renew, Some(current)) => (current, false),
            (Decision::TakeOver, Some(current)) => (current, true),
        };
        if takeover {
            let previous = current
                .spec
                .as_ref()
                .and_then(|spec| spec.holder_identity.as_deref())
                .unwrap_or("");
            info!(holder = %previous, "taking over an expired or released lease");
        }
        let lease = claimed(&current, &self.config, now, takeover);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(lease) => Ok(Outcome::Leading(Box::new(lease))),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(Outcome::LostRace),
            Err(error) => Err(LeaseError::Update(error)),
        }
    }

    async fn create(&self, now: Timestamp) -> Result<Outcome, LeaseError> {
        let lease = new_lease(&self.config, now);
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(lease) => Ok(Outcome::Leading(Box::new(lease))),
            Err(kube::Error::Api(status)) if status.is_already_exists() || status.is_conflict() => {
                Ok(Outcome::LostRace)
            }
            Err(error) => Err(LeaseError::Create(error)),
        }
    }

    fn step_down(&mut self, why: &str) {
        if self.held.take().is_some() {
            warn!(reason = why, "stepping down as leader");
        }
        self.publish(false);
    }

    fn publish(&self, leading: bool) {
        self.leader.send_if_modified(|current| {
            let changed = *current != leading;
            *current = leading;
            changed
        });
    }

    async fn release(&mut self) {
        let Some(held) = self.held.take() else {
            self.publish(false);
            return;
        };
        // Stop writing first: once released, another agent may lead at once.
        self.publish(false);
        let lease = released(&held.lease, (self.clock)());
        let params = PostParams::default();
        let write = self.api.replace(&self.config.name, &params, &lease);
        match tokio::time::timeout(self.config.retry_interval, write).await {
            Ok(Ok(_)) => info!("released the lease"),
            Ok(Err(error)) => {
                warn!(%error, "could not release the lease; it will expire instead")
            }
            Err(_) => warn!("releasing the lease timed out; it will expire instead"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{json, Value};
    use tokio::task::JoinHandle;
    use tower_test::mock::{self, Handle, SendResponse};

    const NAMESPACE: &str = "kloak-system";
    const NAME: &str = "kloak-shadow-writer";
    const ME: &str = "agent-a";
    const OTHER: &str = "agent-b";
    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kloak-system/leases";

    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("valid timestamp")
    }

    fn at(seconds: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(seconds)
    }

    fn lease(holder: Option<&str>, renewed: Option<Timestamp>, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(NAME.into()),
                namespace: Some(NAMESPACE.into()),
                resource_version: Some("41".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed.map(MicroTime),
                acquire_time: renewed.map(MicroTime),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    fn config() -> LeaseConfig {
        LeaseConfig::new(NAMESPACE, NAME, ME)
    }

    #[test]
    fn decisions() {
        let cases = [
            ("no lease", None, Decision::Create),
            (
                "own lease",
                Some(lease(Some(ME), Some(at(0)), 0)),
                Decision::Renew,
            ),
            (
                "own lease, even expired",
                Some(lease(Some(ME), Some(at(-100)), 0)),
                Decision::Renew,
            ),
            (
                "other's live lease",
                Some(lease(Some(OTHER), Some(at(-5)), 0)),
                Decision::Follow {
                    holder: OTHER.into(),
                    expires_at: at(10),
                },
            ),
            (
                "other's lease expiring this instant",
                Some(lease(Some(OTHER), Some(at(-15)), 0)),
                Decision::Follow {
                    holder: OTHER.into(),
                    expires_at: at(0),
                },
            ),
            (
                "other's expired lease",
                Some(lease(Some(OTHER), Some(at(-16)), 0)),
                Decision::TakeOver,
            ),
            (
                "lease without renewTime",
                Some(lease(Some(OTHER), None, 0)),
                Decision::TakeOver,
            ),
            (
                "released lease",
                Some(lease(None, Some(at(0)), 3)),
                Decision::TakeOver,
            ),
            (
                "empty holder",
                Some(lease(Some(""), Some(at(0)), 3)),
                Decision::TakeOver,
            ),
            (
                "lease without spec",
                Some(Lease {
                    spec: None,
                    ..lease(None, None, 0)
                }),
                Decision::TakeOver,
            ),
        ];
        for (name, current, want) in cases {
            assert_eq!(decide(current.as_ref(), ME, t0()), want, "{name}");
        }
    }

    #[test]
    fn a_lease_without_duration_expires_at_its_renewal() {
        let mut current = lease(Some(OTHER), Some(at(-1)), 0);
        if let Some(spec) = current.spec.as_mut() {
            spec.lease_duration_seconds = None;
        }
        assert_eq!(decide(Some(&current), ME, t0()), Decision::TakeOver);
    }

    #[test]
    fn takeover_claims_the_lease_and_counts_a_transition() {
        let current = lease(Some(OTHER), Some(at(-60)), 4);
        let written = claimed(&current, &config(), t0(), true);
        let spec = written.spec.expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.acquire_time, Some(MicroTime(t0())));
        assert_eq!(spec.renew_time, Some(MicroTime(t0())));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(written.metadata.resource_version.as_deref(), Some("41"));
    }

    #[test]
    fn renewal_keeps_acquisition_and_transitions() {
        let current = lease(Some(ME), Some(at(-5)), 4);
        let spec = claimed(&current, &config(), t0(), false)
            .spec
            .expect("spec");
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(-5))));
        assert_eq!(spec.renew_time, Some(MicroTime(t0())));
    }

    #[test]
    fn the_renew_deadline_comes_before_expiry() {
        let config = config();
        assert!(config.renew_interval < config.renew_deadline());
        assert!(config.renew_deadline() < config.lease_duration);
    }

    // The mock API server: each test plays the API server's side of a scenario.

    struct Agent {
        leader: watch::Receiver<bool>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    /// Starts an agent whose wall clock is t0 plus the (paused) tokio time.
    fn start() -> (Agent, ApiHandle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (leader_tx, leader) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let origin = Instant::now();
        let clock = move || t0() + (Instant::now() - origin);
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(run_with_clock(client, config(), leader_tx, shutdown, clock));
        let agent = Agent {
            leader,
            stop: Some(stop),
            task,
        };
        (agent, handle)
    }

    /// Waits for the next call, checks its method and path, returns its body.
    async fn expect(
        handle: &mut ApiHandle,
        method: Method,
        path: &str,
    ) -> (Value, SendResponse<Response<Body>>) {
        let (request, respond) = handle.next_request().await.expect("an API call");
        assert_eq!(request.method(), method);
        assert_eq!(request.uri().path(), path);
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (body, respond)
    }

    fn reply(respond: SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("serialisable");
        respond.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(bytes))
                .expect("response"),
        );
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": reason, "reason": reason, "code": code,
        })
    }

    /// What the server stores: the body written, with a new resourceVersion.
    fn stored(mut body: Value, resource_version: &str) -> Value {
        body["metadata"]["resourceVersion"] = json!(resource_version);
        body
    }

    fn item_path() -> String {
        format!("{LEASE_PATH}/{NAME}")
    }

    fn as_json(lease: &Lease) -> Value {
        serde_json::to_value(lease).expect("serialisable")
    }

    async fn acquire_by_create(handle: &mut ApiHandle) {
        let (_, respond) = expect(handle, Method::GET, &item_path()).await;
        reply(respond, StatusCode::NOT_FOUND, &status(404, "NotFound"));
        let (body, respond) = expect(handle, Method::POST, LEASE_PATH).await;
        reply(respond, StatusCode::CREATED, &stored(body, "1"));
    }

    async fn changed(agent: &mut Agent) -> bool {
        agent.leader.changed().await.expect("the agent publishes");
        *agent.leader.borrow_and_update()
    }

    async fn stop(mut agent: Agent) {
        if let Some(stop) = agent.stop.take() {
            let _ = stop.send(());
        }
        agent.task.await.expect("the agent stops cleanly");
    }

    #[tokio::test(start_paused = true)]
    async fn creates_a_missing_lease_and_leads() {
        let (mut agent, mut handle) = start();
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(respond, StatusCode::NOT_FOUND, &status(404, "NotFound"));
        let (body, respond) = expect(&mut handle, Method::POST, LEASE_PATH).await;
        assert_eq!(body["metadata"]["name"], NAME);
        assert_eq!(body["spec"]["holderIdentity"], ME);
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        assert!(
            !*agent.leader.borrow(),
            "not leader before the write succeeds"
        );
        reply(respond, StatusCode::CREATED, &stored(body, "1"));
        assert!(changed(&mut agent).await);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn losing_the_create_race_follows() {
        let (mut agent, mut handle) = start();
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(respond, StatusCode::NOT_FOUND, &status(404, "NotFound"));
        let (_, respond) = expect(&mut handle, Method::POST, LEASE_PATH).await;
        reply(respond, StatusCode::CONFLICT, &status(409, "AlreadyExists"));
        // The next round reads the winner's lease and only reads.
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(
            respond,
            StatusCode::OK,
            &as_json(&lease(Some(OTHER), Some(t0()), 0)),
        );
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        assert!(!*agent.leader.borrow_and_update());
        drop(respond);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_live_lease_without_writing() {
        let began = Instant::now();
        let (mut agent, mut handle) = start();
        for _ in 0..3 {
            let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
            reply(
                respond,
                StatusCode::OK,
                &as_json(&lease(Some(OTHER), Some(t0()), 0)),
            );
        }
        // Only reads, one retry interval apart.
        let (_, pending) = expect(&mut handle, Method::GET, &item_path()).await;
        assert_eq!(began.elapsed(), Duration::from_secs(6));
        assert!(!*agent.leader.borrow_and_update());
        drop(pending);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn takes_over_an_expired_lease() {
        let (mut agent, mut handle) = start();
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(
            respond,
            StatusCode::OK,
            &as_json(&lease(Some(OTHER), Some(at(-60)), 2)),
        );
        let (body, respond) = expect(&mut handle, Method::PUT, &item_path()).await;
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        assert_eq!(body["spec"]["holderIdentity"], ME);
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        assert_eq!(body["spec"]["renewTime"], json!(MicroTime(t0())));
        reply(respond, StatusCode::OK, &stored(body, "42"));
        assert!(changed(&mut agent).await);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflicting_write_means_not_leader() {
        let (mut agent, mut handle) = start();
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(
            respond,
            StatusCode::OK,
            &as_json(&lease(Some(OTHER), Some(at(-60)), 2)),
        );
        let (_, respond) = expect(&mut handle, Method::PUT, &item_path()).await;
        reply(respond, StatusCode::CONFLICT, &status(409, "Conflict"));
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        assert!(!*agent.leader.borrow_and_update());
        assert!(!agent.leader.has_changed().expect("sender alive"));
        drop(respond);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_renews_with_the_version_it_read() {
        let (mut agent, mut handle) = start();
        acquire_by_create(&mut handle).await;
        assert!(changed(&mut agent).await);
        let acquired = Instant::now();
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        assert_eq!(acquired.elapsed(), Duration::from_secs(5), "renew interval");
        let mut current = lease(Some(ME), Some(t0()), 0);
        current.metadata.resource_version = Some("7".into());
        reply(respond, StatusCode::OK, &as_json(&current));
        let (body, respond) = expect(&mut handle, Method::PUT, &item_path()).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["spec"]["holderIdentity"], ME);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        assert_eq!(body["spec"]["renewTime"], json!(MicroTime(at(5))));
        reply(respond, StatusCode::OK, &stored(body, "8"));
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        assert!(*agent.leader.borrow_and_update(), "still leader");
        assert!(!agent.leader.has_changed().expect("sender alive"));
        drop(respond);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_renewal_fails_steps_down() {
        let (mut agent, mut handle) = start();
        acquire_by_create(&mut handle).await;
        assert!(changed(&mut agent).await);
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(
            respond,
            StatusCode::OK,
            &as_json(&lease(Some(ME), Some(t0()), 0)),
        );
        let (_, respond) = expect(&mut handle, Method::PUT, &item_path()).await;
        reply(
            respond,
            StatusCode::INTERNAL_SERVER_ERROR,
            &status(500, "InternalError"),
        );
        assert!(!changed(&mut agent).await);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_reach_the_api_steps_down_before_expiry() {
        let (mut agent, mut handle) = start();
        acquire_by_create(&mut handle).await;
        assert!(changed(&mut agent).await);
        let acquired = Instant::now();
        // The API server never answers the renewal's read.
        let (_, pending) = expect(&mut handle, Method::GET, &item_path()).await;
        assert!(!changed(&mut agent).await);
        let stepped_down = acquired.elapsed();
        assert!(
            stepped_down < Duration::from_secs(15),
            "stepped down after {stepped_down:?}, when the lease could already be taken over"
        );
        assert!(stepped_down >= Duration::from_secs(5));
        drop(pending);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_seeing_another_holder_steps_down() {
        let (mut agent, mut handle) = start();
        acquire_by_create(&mut handle).await;
        assert!(changed(&mut agent).await);
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(
            respond,
            StatusCode::OK,
            &as_json(&lease(Some(OTHER), Some(at(5)), 1)),
        );
        assert!(!changed(&mut agent).await);
        stop(agent).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_the_lease() {
        let (mut agent, mut handle) = start();
        acquire_by_create(&mut handle).await;
        assert!(changed(&mut agent).await);
        if let Some(stop) = agent.stop.take() {
            let _ = stop.send(());
        }
        let (body, respond) = expect(&mut handle, Method::PUT, &item_path()).await;
        assert!(
            !*agent.leader.borrow_and_update(),
            "false is published before the release"
        );
        assert_eq!(body["metadata"]["resourceVersion"], "1");
        assert!(body["spec"].get("holderIdentity").is_none());
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        reply(respond, StatusCode::OK, &stored(body, "2"));
        agent.task.await.expect("the agent stops cleanly");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_as_follower_writes_nothing() {
        let (agent, mut handle) = start();
        let (_, respond) = expect(&mut handle, Method::GET, &item_path()).await;
        reply(
            respond,
            StatusCode::OK,
            &as_json(&lease(Some(OTHER), Some(t0()), 0)),
        );
        stop(agent).await;
        assert!(handle.next_request().await.is_none(), "no further call");
    }
}
