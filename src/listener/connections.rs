//! The server's table of open connections: what each is doing, how many
//! each peer holds, and which one gives way when a new one needs its slot.
//!
//! A connection earns its slot by sending complete requests. At the cap (or
//! a peer's limit) the server does not stop accepting; it sheds the oldest
//! connection that is not answering a complete request, preferring those
//! that never sent one. A client that connects and dribbles, or holds an
//! HTTP/2 connection open with PINGs, is the first to go; Graph, which
//! sends each request whole, is not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One open connection, as the server watches it.
#[derive(Debug)]
pub(super) struct Conn {
    id: u64,
    peer: IpAddr,
    epoch: Instant,
    accepted: Instant,
    /// Requests hyper handed to the service and not yet answered.
    in_flight: AtomicU32,
    /// Of those, requests whose body has not fully arrived.
    reading: AtomicU32,
    /// Requests whose body arrived in full, since the connection opened.
    complete: AtomicU64,
    /// When the last request was answered (ms after `epoch`); the accept
    /// time before the first.
    idle_since_ms: AtomicU64,
    killed: Notify,
}

impl Conn {
    fn new(id: u64, peer: IpAddr, epoch: Instant) -> Self {
        let accepted = Instant::now();
        Self {
            id,
            peer,
            epoch,
            accepted,
            in_flight: AtomicU32::new(0),
            reading: AtomicU32::new(0),
            complete: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(ms_since(epoch, accepted)),
            killed: Notify::new(),
        }
    }

    /// A request arrived (its headers did). Returns the deadline by which its
    /// body must have arrived: on a connection that was idle, the request
    /// had `timeout` from the moment it went idle, for headers and body
    /// together; beside other streams (HTTP/2), from now.
    pub(super) fn request_started(&self, timeout: Duration) -> Instant {
        let was_idle = self.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        self.reading.fetch_add(1, Ordering::AcqRel);
        let from = if was_idle {
            self.idle_since()
        } else {
            Instant::now()
        };
        from + timeout
    }

    /// The body of a request arrived in full (or the request ended without it).
    pub(super) fn body_done(&self, whole: bool) {
        self.reading.fetch_sub(1, Ordering::AcqRel);
        if whole {
            self.complete.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A request was answered.
    pub(super) fn request_ended(&self) {
        self.idle_since_ms
            .store(ms_since(self.epoch, Instant::now()), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }

    /// Requests received in full and being answered now: the work a shed
    /// would throw away.
    fn answering(&self) -> u32 {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        in_flight.saturating_sub(self.reading.load(Ordering::Acquire))
    }

    fn ever_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire) > 0
    }

    /// When this connection is to be closed for idleness, if nothing happens
    /// before: `idle` after its last answer, or `first` after the accept for
    /// one that has not yet sent a complete request. `None` while it has a
    /// request in flight (whose own deadline bounds it).
    pub(super) fn idle_deadline(&self, idle: Duration, first: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_at = self.idle_since() + idle;
        Some(if self.ever_complete() {
            idle_at
        } else {
            idle_at.min(self.accepted + first)
        })
    }

    /// Completes once the table has shed this connection.
    pub(super) async fn shed(&self) {
        self.killed.notified().await;
    }
}

fn ms_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// How long a new connection is safe from being shed while the server is
/// at its cap: time to send its request. Without it, clients that reconnect
/// the moment they are shed would shed each other (and Graph's connection
/// with them) as fast as the loopback turns over; with it, the turnover is
/// at most the cap per `TENURE`, and a delivery waits behind at most one
/// round of it.
const TENURE: Duration = Duration::from_millis(100);

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Every slot holds a connection answering a complete request, or one
    /// too new to shed: wait for one to free, or until `retry_at` when one
    /// will be old enough.
    Full { retry_at: Option<Instant> },
    /// The peer holds its limit of connections, all answering complete
    /// requests: this one is closed.
    PeerFull,
}

/// A connection admitted to the table, with the one it displaced, if any.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) slot: Slot,
    pub(super) shed: Option<ShedReason>,
}

/// Why a connection was shed to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ShedReason {
    /// The server was at its connection cap.
    Capacity,
    /// The peer was at its connection limit.
    Peer,
}

impl ShedReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ShedReason::Capacity => "shed_capacity",
            ShedReason::Peer => "shed_peer",
        }
    }
}

/// The open connections.
#[derive(Debug)]
pub(super) struct Connections {
    inner: Mutex<Table>,
    max: usize,
    per_peer: usize,
    exempt_loopback: bool,
    epoch: Instant,
    /// Notified whenever a connection leaves the table.
    freed: Notify,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Arc<Conn>> {
        let conn = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&conn.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&conn.peer);
            }
        }
        Some(conn)
    }

    /// The connection to shed first among those `pick` selects: one that
    /// never sent a complete request before one that did, then the one
    /// waiting longest (since its accept, or since its last answer).
    fn victim(&self, pick: impl Fn(&Conn) -> bool) -> Option<&Conn> {
        self.open
            .values()
            .filter(|c| pick(c) && c.answering() == 0)
            .map(|c| &**c)
            .min_by_key(|c| {
                let since = if c.ever_complete() {
                    c.idle_since()
                } else {
                    c.accepted
                };
                (c.ever_complete(), since)
            })
    }
}

impl Connections {
    /// A table of at most `max` connections, `per_peer` of them from one
    /// address (0: no per-peer limit), loopback addresses too unless
    /// `exempt_loopback`.
    pub(super) fn new(max: usize, per_peer: usize, exempt_loopback: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Table::default()),
            max: max.max(1),
            per_peer,
            exempt_loopback,
            epoch: Instant::now(),
            freed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table holds no invariant a panicking holder could break halfway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer`, shedding another if it must.
    ///
    /// At the peer's limit, the peer's own oldest idle connection goes (the
    /// new one is refused if there is none): a peer that churns its own
    /// connections harms only itself. At the cap, the oldest idle
    /// connection that has had its [`TENURE`] goes; if none has yet, the
    /// caller waits.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refusal> {
        let peer = canonical(peer);
        let mut table = self.lock();
        let mut shed = None;
        let limited = self.per_peer > 0 && !(self.exempt_loopback && peer.is_loopback());
        if limited && table.per_peer.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            let victim = table.victim(|c| c.peer == peer).ok_or(Refusal::PeerFull)?;
            let id = victim.id;
            self.kill(&mut table, id);
            shed = Some(ShedReason::Peer);
        }
        if table.open.len() >= self.max {
            let now = Instant::now();
            let tenured = table.victim(|c| now.duration_since(c.accepted) >= TENURE);
            let Some(victim) = tenured else {
                let retry_at = table.victim(|_| true).map(|c| c.accepted + TENURE);
                return Err(Refusal::Full { retry_at });
            };
            let id = victim.id;
            self.kill(&mut table, id);
            shed = Some(ShedReason::Capacity);
        }
        let id = table.next_id;
        table.next_id += 1;
        let conn = Arc::new(Conn::new(id, peer, self.epoch));
        table.open.insert(id, conn.clone());
        *table.per_peer.entry(peer).or_default() += 1;
        drop(table);
        Ok(Admitted {
            slot: Slot {
                conn,
                table: self.clone(),
            },
            shed,
        })
    }

    fn kill(&self, table: &mut Table, id: u64) {
        if let Some(conn) = table.remove(id) {
            // A stored permit: the connection's task sees it even if it is
            // not waiting at this instant.
            conn.killed.notify_one();
        }
        self.freed.notify_waiters();
    }

    /// Open connections now.
    pub(super) fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Completes when a connection leaves the table after this call was
    /// made (enable the future before checking, to miss nothing).
    pub(super) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}

/// An IPv4 peer seen through an IPv6 socket counts as the IPv4 address.
fn canonical(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
        IpAddr::V4(_) => peer,
    }
}

/// A connection's place in the table; leaving it frees the slot.
#[derive(Debug)]
pub(super) struct Slot {
    conn: Arc<Conn>,
    table: Arc<Connections>,
}

impl Slot {
    pub(super) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        // Already gone if it was shed.
        if table.remove(self.conn.id).is_some() {
            drop(table);
            self.table.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::net::Ipv4Addr;

    use super::*;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn at_the_cap_the_oldest_connection_without_a_complete_request_goes() {
        let table = Connections::new(3, 0, false);
        let productive = table.admit(A).unwrap().slot;
        productive.conn().request_started(Duration::from_secs(1));
        productive.conn().body_done(true);
        let old_silent = table.admit(A).unwrap().slot;
        let new_silent = table.admit(A).unwrap().slot;
        // Too new to shed: the caller is told when the oldest will be.
        let Err(Refusal::Full { retry_at: Some(at) }) = table.admit(B) else {
            panic!("a connection within its tenure is not shed");
        };
        assert!(at <= Instant::now() + TENURE);
        std::thread::sleep(TENURE);
        let next = table.admit(B).unwrap();
        assert_eq!(next.shed, Some(ShedReason::Capacity));
        assert_eq!(table.len(), 3);
        // The oldest silent one was told to go; the others were not.
        let told = |slot: &Slot| {
            let mut shed = std::pin::pin!(slot.conn().shed());
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            shed.as_mut().poll(&mut cx).is_ready()
        };
        assert!(told(&old_silent));
        assert!(!told(&new_silent));
        assert!(!told(&productive));
        drop(old_silent);
        assert_eq!(table.len(), 3, "a shed slot is not freed twice");
    }

    #[test]
    fn connections_answering_complete_requests_are_never_shed() {
        let table = Connections::new(2, 0, false);
        let mut busy = Vec::new();
        for _ in 0..2 {
            let slot = table.admit(A).unwrap().slot;
            slot.conn().request_started(Duration::from_secs(1));
            slot.conn().body_done(true);
            busy.push(slot);
        }
        assert_eq!(
            table.admit(B).unwrap_err(),
            Refusal::Full { retry_at: None }
        );
        // Once one is answered it is idle, and may give way.
        busy[0].conn().request_ended();
        std::thread::sleep(TENURE);
        assert_eq!(table.admit(B).unwrap().shed, Some(ShedReason::Capacity));
    }

    #[test]
    fn a_peer_at_its_limit_sheds_its_own_connections_first() {
        let table = Connections::new(10, 2, false);
        let other = table.admit(B).unwrap().slot;
        let _a1 = table.admit(A).unwrap().slot;
        let a2 = table.admit(A).unwrap().slot;
        let a3 = table.admit(A).unwrap();
        assert_eq!(a3.shed, Some(ShedReason::Peer));
        assert_eq!(table.len(), 3);
        drop(other);
        assert_eq!(table.len(), 2);
        // All of A's connections busy: A's next one is refused.
        a3.slot.conn().request_started(Duration::from_secs(1));
        a3.slot.conn().body_done(true);
        a2.conn().request_started(Duration::from_secs(1));
        a2.conn().body_done(true);
        assert_eq!(table.admit(A).unwrap_err(), Refusal::PeerFull);
        assert!(table.admit(B).is_ok());
    }

    #[test]
    fn loopback_peers_may_be_exempt_from_the_peer_limit() {
        let table = Connections::new(10, 1, true);
        let _a = table.admit(A).unwrap().slot;
        let again = table.admit(A).unwrap();
        assert_eq!(again.shed, None, "a local proxy forwards everybody");
        let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let _r = table.admit(remote).unwrap().slot;
        assert_eq!(table.admit(remote).unwrap().shed, Some(ShedReason::Peer));
    }

    #[test]
    fn idle_deadlines() {
        let table = Connections::new(4, 0, false);
        let slot = table.admit(A).unwrap().slot;
        let conn = slot.conn();
        let (idle, first) = (Duration::from_secs(10), Duration::from_secs(3));
        let fresh = conn.idle_deadline(idle, first).unwrap();
        assert!(fresh <= conn.accepted + first);
        let deadline = conn.request_started(Duration::from_secs(5));
        assert!(deadline <= conn.accepted + Duration::from_secs(5));
        assert_eq!(conn.idle_deadline(idle, first), None, "busy");
        conn.body_done(true);
        conn.request_ended();
        let after = conn.idle_deadline(idle, first).unwrap();
        assert!(after >= conn.accepted + idle - Duration::from_millis(1));
    }
}
