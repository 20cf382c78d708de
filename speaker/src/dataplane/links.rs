//! Which interfaces may announce: a pure classifier over rtnetlink link messages, and a
//! watcher that keeps the table current from RTNLGRP_LINK events (no polling).
//!
//! ```text
//!  kernel ──RTM_NEWLINK/DELLINK──▶ LinkTable::upsert ──classify──▶ Links (name → LinkInfo)
//!         ──RTM_NEWADDR/DELADDR──▶ LinkTable::add_address ───────────┘   └──▶ tokio watch
//!    ▲ initial dumps (and again after a netlink overrun)
//! ```
//!
//! A link is a candidate when it is broadcast-capable, does ARP (no `IFF_NOARP`), is not
//! loopback, has a 6-byte MAC, is not enslaved to a bond, bridge or Open vSwitch datapath
//! (the master is the candidate: `br-ex`, not the uplink in it) and matches no exclude
//! glob. Candidates are published with their `up` state and the subnets configured on them
//! (RTNLGRP_IPV4_IFADDR / RTNLGRP_IPV6_IFADDR); the speaker core announces on the ones that
//! are up ([`usable`]), the data plane narrows each IP to the one allowed interface whose
//! subnet holds it ([`narrow_to_subnets`]) and re-announces when a link comes back up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use std::net::IpAddr;

use futures::StreamExt;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, MulticastGroup, new_multicast_connection};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::Announcements;
use crate::core::Interfaces;
use crate::wire::MacAddr;

/// Interface names the caller may exclude by default: container, overlay and tunnel
/// devices that never carry the LAN a LoadBalancer IP lives on.
///
/// Docker's per-network bridges are `br-` and 12 hex digits, hence `br-????????????` rather
/// than `br-*`: OVN-Kubernetes' gateway bridge `br-ex` (or `breth0`) holds the node's LAN
/// address (its physical uplink is an Open vSwitch port, enslaved, so never a candidate) and
/// must stay usable. OVN's integration bridge `br-int` and management port `ovn-k8s-mp0` are
/// excluded by name.
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "lo",
    "docker*",
    "veth*",
    "cni*",
    "cali*",
    "flannel*",
    "kube-ipvs*",
    "kube-bridge",
    "kube-dummy-if",
    "cilium*",
    "lxc*",
    "vxlan*",
    "genev*",
    "tunl*",
    "tun*",
    "tap*",
    "virbr*",
    "nodelocaldns",
    "weave",
    "datapath",
    "antrea-*",
    "ovs-system",
    "br-int",
    "ovn-k8s-*",
    "br-????????????",
    "podman*",
    "nerdctl*",
];

/// What the data plane needs to open a socket on an interface and answer from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Kernel interface index (the AF_PACKET bind address).
    pub index: u32,
    /// The interface's MAC: the answer to every ARP/NDP request received on it.
    pub mac: MacAddr,
    /// Administratively up and operationally up (IFF_UP and IFF_RUNNING).
    pub up: bool,
    /// Kernel count of carrier-up events (IFLA_CARRIER_UP_COUNT): a change means the link
    /// came back, even if a quick flap was coalesced, so announcements are repeated.
    pub carrier_ups: u32,
    /// Subnets configured on the interface (its global and site-scope addresses with their
    /// prefix length, host bits cleared): an IP inside one of them is on-link here.
    pub subnets: BTreeSet<IpNet>,
}

/// Candidate interfaces by name.
pub type Links = BTreeMap<String, LinkInfo>;

/// The names of the candidates that are up: what the speaker core may elect on.
pub fn usable(links: &Links) -> BTreeSet<String> {
    links
        .iter()
        .filter(|(_, l)| l.up)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Why a link is not a candidate (for debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The message carries no IFLA_IFNAME.
    NoName,
    /// The name matches an exclude pattern.
    Excluded,
    /// IFF_LOOPBACK.
    Loopback,
    /// No IFF_BROADCAST (point-to-point, tunnels, WireGuard…).
    NotBroadcast,
    /// IFF_NOARP: the kernel does neither ARP nor NDP there (dummy devices, some tunnels
    /// and `ip link set … arp off`), so nobody on it resolves addresses through us.
    NoArp,
    /// Enslaved to a bond, bridge or Open vSwitch datapath (IFLA_MASTER set): announce on
    /// the master instead (frames arriving on a port are handed to the master).
    Enslaved,
    /// No 6-byte, non-zero hardware address.
    NoMac,
}

impl SkipReason {
    /// Stable snake_case name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NoName => "no_name",
            SkipReason::Excluded => "excluded",
            SkipReason::Loopback => "loopback",
            SkipReason::NotBroadcast => "not_broadcast",
            SkipReason::NoArp => "noarp",
            SkipReason::Enslaved => "enslaved",
            SkipReason::NoMac => "no_mac",
        }
    }
}

/// Shell-style glob: `*` matches any run of characters, `?` exactly one; nothing else is
/// special. Used for the interface exclude list.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == n[ni])) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if let Some((bp, bn)) = backtrack {
            pi = bp + 1;
            ni = bn + 1;
            backtrack = Some((bp, bn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Classifies one RTM_NEWLINK message: its name and, if it is a candidate, its info.
pub fn classify(
    msg: &LinkMessage,
    exclude: &[String],
) -> (Option<String>, Result<LinkInfo, SkipReason>) {
    let mut name = None;
    let mut mac = None;
    let mut master = 0;
    let mut carrier_ups = 0;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let m = MacAddr::new(a[0], a[1], a[2], a[3], a[4], a[5]);
                if !m.is_zero() {
                    mac = Some(m);
                }
            }
            LinkAttribute::Controller(idx) => master = *idx,
            LinkAttribute::CarrierUpCount(c) => carrier_ups = *c,
            _ => {}
        }
    }
    let Some(name) = name else {
        return (None, Err(SkipReason::NoName));
    };
    let flags = msg.header.flags;
    let verdict = if exclude.iter().any(|p| glob_match(p, &name)) {
        Err(SkipReason::Excluded)
    } else if flags.contains(LinkFlags::Loopback) {
        Err(SkipReason::Loopback)
    } else if !flags.contains(LinkFlags::Broadcast) {
        Err(SkipReason::NotBroadcast)
    } else if flags.contains(LinkFlags::Noarp) {
        Err(SkipReason::NoArp)
    } else if master != 0 {
        Err(SkipReason::Enslaved)
    } else if let Some(mac) = mac {
        Ok(LinkInfo {
            index: msg.header.index,
            mac,
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
            carrier_ups,
            subnets: BTreeSet::new(),
        })
    } else {
        Err(SkipReason::NoMac)
    };
    (Some(name), verdict)
}

/// The address an RTM_NEWADDR/RTM_DELADDR message is about, with its interface index:
/// IFA_LOCAL (IFA_ADDRESS is the peer on point-to-point links), else IFA_ADDRESS, with the
/// prefix length. Host- and link-scope addresses (loopback, fe80::/64, 169.254/16) say
/// nothing about which LAN a LoadBalancer IP lives on and are ignored.
pub fn address_of(msg: &AddressMessage) -> Option<(u32, IpNet)> {
    if matches!(msg.header.scope, AddressScope::Host | AddressScope::Link) {
        return None;
    }
    let (mut local, mut address) = (None, None);
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some((msg.header.index, net))
}

/// The kernel's links by index, classified, and their addresses; pure, fed by the watcher.
#[derive(Debug, Clone, Default)]
pub struct LinkTable {
    exclude: Vec<String>,
    by_index: BTreeMap<u32, (String, Result<LinkInfo, SkipReason>)>,
    /// Addresses (with prefix length, host bits kept) by interface index.
    addrs: BTreeMap<u32, BTreeSet<IpNet>>,
}

impl LinkTable {
    /// An empty table using the caller's exclude globs.
    pub fn new(exclude: Vec<String>) -> Self {
        LinkTable {
            exclude,
            by_index: BTreeMap::new(),
            addrs: BTreeMap::new(),
        }
    }

    /// Applies RTM_NEWLINK (a new link, or any change, renames included).
    pub fn upsert(&mut self, msg: &LinkMessage) {
        let (Some(name), verdict) = classify(msg, &self.exclude) else {
            // Partial notifications without a name: keep what we knew.
            return;
        };
        if let Err(reason) = verdict {
            let before = self.by_index.get(&msg.header.index);
            let known = before.is_some_and(|(n, v)| *n == name && *v == Err(reason));
            // Excluded links are the many container veths: debug only. Other reasons are
            // a link an operator may expect us to use, so say why not, once per change.
            if known || reason == SkipReason::Excluded {
                debug!(iface = %name, reason = reason.as_str(), "interface not usable for announcements");
            } else {
                info!(iface = %name, reason = reason.as_str(), "interface not usable for announcements");
            }
        }
        self.by_index.insert(msg.header.index, (name, verdict));
    }

    /// Applies RTM_DELLINK (deleted, or moved to another namespace).
    pub fn remove(&mut self, index: u32) {
        self.by_index.remove(&index);
        self.addrs.remove(&index);
    }

    /// Applies RTM_NEWADDR.
    pub fn add_address(&mut self, msg: &AddressMessage) {
        if let Some((index, net)) = address_of(msg) {
            self.addrs.entry(index).or_default().insert(net);
        }
    }

    /// Applies RTM_DELADDR.
    pub fn remove_address(&mut self, msg: &AddressMessage) {
        if let Some((index, net)) = address_of(msg)
            && let Some(set) = self.addrs.get_mut(&index)
        {
            set.remove(&net);
            if set.is_empty() {
                self.addrs.remove(&index);
            }
        }
    }

    /// Forgets everything (before a re-dump).
    pub fn clear(&mut self) {
        self.by_index.clear();
        self.addrs.clear();
    }

    /// The candidates by name, with their subnets.
    pub fn links(&self) -> Links {
        self.by_index
            .iter()
            .filter_map(|(index, (name, v))| {
                let mut info = v.as_ref().ok()?.clone();
                info.subnets = self
                    .addrs
                    .get(index)
                    .map(|a| a.iter().map(IpNet::trunc).collect())
                    .unwrap_or_default();
                Some((name.clone(), info))
            })
            .collect()
    }
}

/// Where to answer for `ip` among the interfaces the election `allowed` on this node: the
/// one allowed interface that is up and has a subnet containing `ip`, when there is
/// exactly one such; otherwise every allowed interface (none is on-link, or several are
/// and nothing tells them apart).
///
/// A node only learns its own subnets, so this is a data-plane rule: it never empties the
/// set, so the core's "has an allowed usable interface" eligibility still holds.
pub fn on_link_interfaces(
    ip: IpAddr,
    allowed: &BTreeSet<String>,
    links: &Links,
) -> BTreeSet<String> {
    match on_link_only(ip, allowed, links) {
        Some(only) => BTreeSet::from([only.clone()]),
        None => allowed.clone(),
    }
}

/// The interface [`on_link_interfaces`] narrows `allowed` to, if it narrows it.
fn on_link_only<'a>(
    ip: IpAddr,
    allowed: &'a BTreeSet<String>,
    links: &Links,
) -> Option<&'a String> {
    let mut on_link = allowed.iter().filter(|name| {
        links
            .get(*name)
            .is_some_and(|l| l.up && l.subnets.iter().any(|net| net.contains(&ip)))
    });
    match (on_link.next(), on_link.next()) {
        (Some(only), None) if allowed.len() > 1 => Some(only),
        _ => None,
    }
}

/// [`on_link_interfaces`] for every announced IP. The narrowed sets are shared like the
/// table's ([`Interfaces`]): one per interface, not one per IP.
pub fn narrow_to_subnets(desired: &Announcements, links: &Links) -> Announcements {
    let mut single: BTreeMap<&str, Interfaces> = BTreeMap::new();
    desired
        .iter()
        .map(|(ip, allowed)| {
            let narrowed = match on_link_only(*ip, allowed, links) {
                Some(only) => single
                    .entry(only)
                    .or_insert_with(|| Arc::new(BTreeSet::from([only.clone()])))
                    .clone(),
                None => allowed.clone(),
            };
            (*ip, narrowed)
        })
        .collect()
}

/// Why the watcher could not start. Retryable: netlink sockets fail only under resource
/// pressure or without permission.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening or subscribing the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The initial link dump failed.
    #[error("netlink link dump: {0}")]
    Dump(#[from] rtnetlink::Error),
}

type Messages = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

struct Session {
    handle: Handle,
    messages: Messages,
    conn: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Subscribes to link and address events first, then dumps, so no change between the two
/// is missed.
async fn connect(table: &mut LinkTable) -> Result<Session, LinkError> {
    let (conn, handle, messages) = new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ])?;
    let session = Session {
        handle,
        messages,
        conn: tokio::spawn(conn),
    };
    dump(&session.handle, table).await?;
    Ok(session)
}

async fn dump(handle: &Handle, table: &mut LinkTable) -> Result<(), LinkError> {
    let msgs: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    let addrs: Vec<AddressMessage> = handle.address().get().execute().try_collect().await?;
    table.clear();
    for m in &msgs {
        table.upsert(m);
    }
    for a in &addrs {
        table.add_address(a);
    }
    Ok(())
}

/// Follows the kernel's links and publishes the candidate table on every change.
///
/// Dropping it stops the background task.
pub struct LinkWatcher {
    rx: watch::Receiver<Links>,
    task: JoinHandle<()>,
}

impl LinkWatcher {
    /// Subscribes to RTNLGRP_LINK and the address groups, dumps the current links and
    /// addresses and starts following events;
    /// returns once the first table is known. Needs a tokio runtime.
    pub async fn start(exclude: Vec<String>) -> Result<LinkWatcher, LinkError> {
        let mut table = LinkTable::new(exclude);
        let session = connect(&mut table).await?;
        let (tx, rx) = watch::channel(table.links());
        info!(interfaces = ?usable(&table.links()), "link watcher started");
        let task = tokio::spawn(follow(session, table, tx));
        Ok(LinkWatcher { rx, task })
    }

    /// A receiver of every change of the candidate table.
    pub fn subscribe(&self) -> watch::Receiver<Links> {
        self.rx.clone()
    }

    /// The current candidate table.
    pub fn links(&self) -> Links {
        self.rx.borrow().clone()
    }
}

impl Drop for LinkWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(mut session: Session, mut table: LinkTable, tx: watch::Sender<Links>) {
    loop {
        match session.messages.next().await {
            Some((msg, _)) => match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => table.upsert(&m),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    table.remove(m.header.index)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                    table.add_address(&m)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                    table.remove_address(&m)
                }
                NetlinkPayload::Overrun(_) => {
                    warn!("netlink link events overran; dumping links again");
                    if let Err(e) = dump(&session.handle, &mut table).await {
                        warn!(error = %e, "link re-dump failed; reconnecting");
                        session = reconnect(&mut table).await;
                    }
                }
                _ => {}
            },
            None => {
                warn!("netlink link event stream ended; reconnecting");
                session = reconnect(&mut table).await;
            }
        }
        let links = table.links();
        tx.send_if_modified(|cur| {
            if *cur == links {
                return false;
            }
            let now = usable(&links);
            if usable(cur) != now {
                info!(interfaces = ?now, "usable interfaces changed");
            } else {
                debug!(interfaces = ?now, "interface state or subnets changed");
            }
            *cur = links;
            true
        });
    }
}

async fn reconnect(table: &mut LinkTable) -> Session {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect(table).await {
            Ok(s) => return s,
            Err(e) => {
                warn!(error = %e, "netlink reconnect failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_link(index: u32, name: &str, flags: LinkFlags, attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = flags;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.extend(attrs);
        m
    }

    fn mac_attr(last: u8) -> LinkAttribute {
        LinkAttribute::Address(vec![2, 0, 0, 0, 0, last])
    }

    fn up() -> LinkFlags {
        LinkFlags::Up | LinkFlags::Running | LinkFlags::Broadcast | LinkFlags::Multicast
    }

    fn defaults() -> Vec<String> {
        DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn glob() {
        let cases = [
            ("veth*", "veth1234", true),
            ("veth*", "veth", true),
            ("veth*", "eth0", false),
            ("lo", "lo", true),
            ("lo", "lo0", false),
            ("eth?", "eth0", true),
            ("eth?", "eth10", false),
            ("*ipvs*", "kube-ipvs0", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("br-*", "br0", false),
            ("br-*", "br-1a2b3c", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn classify_table() {
        let ex = defaults();
        let ok = |index, last, up, carrier_ups| {
            Ok(LinkInfo {
                index,
                mac: MacAddr::new(2, 0, 0, 0, 0, last),
                up,
                carrier_ups,
                subnets: BTreeSet::new(),
            })
        };
        let cases: Vec<(&str, LinkMessage, Result<LinkInfo, SkipReason>)> = vec![
            (
                "plain NIC",
                mk_link(
                    2,
                    "eth0",
                    up(),
                    vec![mac_attr(1), LinkAttribute::CarrierUpCount(3)],
                ),
                ok(2, 1, true, 3),
            ),
            (
                "admin down",
                mk_link(2, "eth0", LinkFlags::Broadcast, vec![mac_attr(1)]),
                ok(2, 1, false, 0),
            ),
            (
                "admin up, no carrier",
                mk_link(
                    2,
                    "eth0",
                    LinkFlags::Up | LinkFlags::Broadcast,
                    vec![mac_attr(1)],
                ),
                ok(2, 1, false, 0),
            ),
            (
                "bond master",
                mk_link(5, "bond0", up() | LinkFlags::Controller, vec![mac_attr(5)]),
                ok(5, 5, true, 0),
            ),
            (
                "bond slave",
                mk_link(
                    3,
                    "eno1",
                    up(),
                    vec![mac_attr(3), LinkAttribute::Controller(5)],
                ),
                Err(SkipReason::Enslaved),
            ),
            (
                "loopback",
                mk_link(1, "lo0x", up() | LinkFlags::Loopback, vec![]),
                Err(SkipReason::Loopback),
            ),
            (
                "excluded by glob",
                mk_link(7, "veth12ab", up(), vec![mac_attr(7)]),
                Err(SkipReason::Excluded),
            ),
            (
                "excluded by name",
                mk_link(1, "lo", up() | LinkFlags::Loopback, vec![]),
                Err(SkipReason::Excluded),
            ),
            (
                "point-to-point",
                mk_link(8, "wg0", LinkFlags::Up | LinkFlags::Running, vec![]),
                Err(SkipReason::NotBroadcast),
            ),
            (
                "arp off",
                mk_link(10, "eth1", up() | LinkFlags::Noarp, vec![mac_attr(10)]),
                Err(SkipReason::NoArp),
            ),
            (
                "dummy device (NOARP by default)",
                mk_link(
                    11,
                    "dummy0",
                    LinkFlags::Up | LinkFlags::Running | LinkFlags::Broadcast | LinkFlags::Noarp,
                    vec![mac_attr(11)],
                ),
                Err(SkipReason::NoArp),
            ),
            (
                "no address",
                mk_link(9, "eth9", up(), vec![]),
                Err(SkipReason::NoMac),
            ),
            (
                "zero address",
                mk_link(9, "eth9", up(), vec![LinkAttribute::Address(vec![0; 6])]),
                Err(SkipReason::NoMac),
            ),
            (
                "infiniband-length address",
                mk_link(9, "ib0", up(), vec![LinkAttribute::Address(vec![1; 20])]),
                Err(SkipReason::NoMac),
            ),
        ];
        for (name, msg, want) in cases {
            assert_eq!(classify(&msg, &ex).1, want, "{name}");
        }
        let mut nameless = LinkMessage::default();
        nameless.header.flags = up();
        assert_eq!(classify(&nameless, &ex), (None, Err(SkipReason::NoName)));
    }

    #[test]
    fn exclude_list_is_the_callers() {
        let msg = mk_link(4, "eth0", up(), vec![mac_attr(4)]);
        assert!(classify(&msg, &["eth*".to_string()]).1.is_err());
        assert!(classify(&msg, &[]).1.is_ok());
    }

    #[test]
    fn table_follows_events() {
        let mut t = LinkTable::new(defaults());
        t.upsert(&mk_link(2, "eth0", up(), vec![mac_attr(2)]));
        t.upsert(&mk_link(3, "eth1", LinkFlags::Broadcast, vec![mac_attr(3)]));
        t.upsert(&mk_link(4, "veth0", up(), vec![mac_attr(4)]));
        assert_eq!(
            t.links().keys().cloned().collect::<Vec<_>>(),
            vec!["eth0", "eth1"]
        );
        assert_eq!(usable(&t.links()), BTreeSet::from(["eth0".to_string()]));
        // eth1 comes up, eth0 is renamed, veth0 disappears.
        t.upsert(&mk_link(3, "eth1", up(), vec![mac_attr(3)]));
        t.upsert(&mk_link(2, "lan0", up(), vec![mac_attr(2)]));
        t.remove(4);
        assert_eq!(
            usable(&t.links()),
            BTreeSet::from(["eth1".to_string(), "lan0".to_string()])
        );
        // eth1 joins a bond: it is no longer a candidate.
        t.upsert(&mk_link(
            3,
            "eth1",
            up(),
            vec![mac_attr(3), LinkAttribute::Controller(9)],
        ));
        assert_eq!(usable(&t.links()), BTreeSet::from(["lan0".to_string()]));
        t.clear();
        assert!(t.links().is_empty());
    }

    #[test]
    fn noarp_links_are_never_candidates_and_follow_the_flag() {
        let mut t = LinkTable::new(defaults());
        t.upsert(&mk_link(2, "eth0", up(), vec![mac_attr(2)]));
        t.upsert(&mk_link(
            3,
            "eth1",
            up() | LinkFlags::Noarp,
            vec![mac_attr(3)],
        ));
        assert_eq!(usable(&t.links()), BTreeSet::from(["eth0".to_string()]));
        // `ip link set eth1 arp on`: a candidate from the next RTM_NEWLINK on.
        t.upsert(&mk_link(3, "eth1", up(), vec![mac_attr(3)]));
        assert_eq!(
            usable(&t.links()),
            BTreeSet::from(["eth0".to_string(), "eth1".to_string()])
        );
        t.upsert(&mk_link(
            3,
            "eth1",
            up() | LinkFlags::Noarp,
            vec![mac_attr(3)],
        ));
        assert_eq!(usable(&t.links()), BTreeSet::from(["eth0".to_string()]));
    }

    /// OVN-Kubernetes' shared gateway: the node's address lives on the OVS bridge `br-ex`,
    /// the NIC is an OVS port (IFLA_MASTER = ovs-system); the same with a Linux bridge.
    #[test]
    fn ovn_gateway_bridge_is_a_candidate_and_its_uplink_is_not() {
        let ex = defaults();
        let verdict = |msg: LinkMessage| classify(&msg, &ex).1.map(drop);
        let mut t = LinkTable::new(ex.clone());
        let node = [
            mk_link(
                2,
                "ovs-system",
                LinkFlags::Broadcast | LinkFlags::Multicast,
                vec![mac_attr(2)],
            ),
            mk_link(
                3,
                "ens3",
                up(),
                vec![mac_attr(3), LinkAttribute::Controller(2)],
            ),
            mk_link(4, "br-ex", up(), vec![mac_attr(3)]),
            mk_link(5, "br-int", LinkFlags::Broadcast, vec![mac_attr(5)]),
            mk_link(6, "ovn-k8s-mp0", up(), vec![mac_attr(6)]),
            mk_link(7, "genev_sys_6081", up(), vec![mac_attr(7)]),
            mk_link(8, "br-1a2b3c4d5e6f", up(), vec![mac_attr(8)]),
            mk_link(9, "breth0", up(), vec![mac_attr(9)]),
        ];
        let want: [Result<(), SkipReason>; 8] = [
            Err(SkipReason::Excluded),
            Err(SkipReason::Enslaved),
            Ok(()),
            Err(SkipReason::Excluded),
            Err(SkipReason::Excluded),
            Err(SkipReason::Excluded),
            Err(SkipReason::Excluded),
            Ok(()),
        ];
        for (msg, want) in node.iter().zip(want) {
            assert_eq!(verdict(msg.clone()), want, "{:?}", msg.attributes[0]);
            t.upsert(msg);
        }
        assert_eq!(
            usable(&t.links()),
            BTreeSet::from(["br-ex".to_string(), "breth0".to_string()])
        );
        // A Linux bridge called br-ex: the port is enslaved to it, the bridge answers.
        let port = mk_link(
            12,
            "eno1",
            up(),
            vec![mac_attr(12), LinkAttribute::Controller(4)],
        );
        assert_eq!(verdict(port), Err(SkipReason::Enslaved));
        // Docker's network bridges stay excluded, a LAN bridge of another length does not.
        for (name, excluded) in [
            ("br-0123456789ab", true),
            ("br-lan", false),
            ("br-ex", false),
        ] {
            assert_eq!(ex.iter().any(|p| glob_match(p, name)), excluded, "{name}");
        }
    }

    fn mk_addr(index: u32, ip: &str, prefix_len: u8, scope: AddressScope) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = prefix_len;
        m.header.scope = scope;
        let ip: IpAddr = ip.parse().unwrap();
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(ip));
        }
        m
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn addresses_become_subnets_of_their_link() {
        let mut t = LinkTable::new(defaults());
        t.upsert(&mk_link(2, "eth0", up(), vec![mac_attr(2)]));
        t.upsert(&mk_link(3, "eth1", up(), vec![mac_attr(3)]));
        let a1 = mk_addr(2, "198.51.100.11", 24, AddressScope::Universe);
        let a2 = mk_addr(2, "198.51.100.12", 24, AddressScope::Universe);
        t.add_address(&a1);
        t.add_address(&a2);
        t.add_address(&mk_addr(2, "2001:db8:100::11", 64, AddressScope::Universe));
        t.add_address(&mk_addr(2, "fe80::1", 64, AddressScope::Link));
        t.add_address(&mk_addr(3, "203.0.113.200", 25, AddressScope::Universe));
        t.add_address(&mk_addr(1, "127.0.0.1", 8, AddressScope::Host));
        let links = t.links();
        assert_eq!(
            links["eth0"].subnets,
            nets(&["198.51.100.0/24", "2001:db8:100::/64"])
        );
        assert_eq!(links["eth1"].subnets, nets(&["203.0.113.128/25"]));
        // One of two addresses in a subnet goes: the subnet stays; both go: it is gone.
        t.remove_address(&a1);
        assert!(
            t.links()["eth0"]
                .subnets
                .contains(&"198.51.100.0/24".parse().unwrap())
        );
        t.remove_address(&a2);
        assert_eq!(t.links()["eth0"].subnets, nets(&["2001:db8:100::/64"]));
        // Addresses that arrive before their link (dump order) and die with it.
        t.add_address(&mk_addr(9, "203.0.113.1", 24, AddressScope::Universe));
        t.upsert(&mk_link(9, "eth9", up(), vec![mac_attr(9)]));
        assert_eq!(t.links()["eth9"].subnets, nets(&["203.0.113.0/24"]));
        t.remove(9);
        t.upsert(&mk_link(9, "eth9", up(), vec![mac_attr(9)]));
        assert!(t.links()["eth9"].subnets.is_empty());
        // Point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer.
        let mut ptp = mk_addr(3, "198.51.100.99", 32, AddressScope::Universe);
        ptp.attributes = vec![
            AddressAttribute::Address("198.51.100.1".parse().unwrap()),
            AddressAttribute::Local("198.51.100.99".parse().unwrap()),
        ];
        assert_eq!(
            address_of(&ptp),
            Some((3, "198.51.100.99/32".parse().unwrap()))
        );
    }

    fn link_with(index: u32, up: bool, subnets: &[&str]) -> LinkInfo {
        LinkInfo {
            index,
            mac: MacAddr::new(2, 0, 0, 0, 0, index as u8),
            up,
            carrier_ups: 1,
            subnets: nets(subnets),
        }
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn answer_only_on_the_one_allowed_interface_whose_subnet_holds_the_ip() {
        let links = Links::from([
            (
                "eth0".to_string(),
                link_with(2, true, &["198.51.100.0/24", "2001:db8:100::/64"]),
            ),
            ("eth1".to_string(), link_with(3, true, &["203.0.113.0/24"])),
            ("eth2".to_string(), link_with(4, true, &["203.0.113.0/25"])),
            (
                "eth3".to_string(),
                link_with(5, false, &["2001:db8:300::/64"]),
            ),
            ("eth4".to_string(), link_with(6, true, &[])),
        ]);
        let cases: [(&str, &str, &[&str], &[&str]); 9] = [
            (
                "one on-link interface",
                "198.51.100.200",
                &["eth0", "eth1", "eth4"],
                &["eth0"],
            ),
            ("IPv6 too", "2001:db8:100::99", &["eth0", "eth1"], &["eth0"]),
            (
                "none on-link: all",
                "203.0.113.10",
                &["eth0", "eth4"],
                &["eth0", "eth4"],
            ),
            (
                "two on-link: all",
                "203.0.113.10",
                &["eth0", "eth1", "eth2"],
                &["eth0", "eth1", "eth2"],
            ),
            (
                "the other one is outside /25",
                "203.0.113.200",
                &["eth1", "eth2", "eth4"],
                &["eth1"],
            ),
            (
                "on-link but not allowed",
                "198.51.100.200",
                &["eth1", "eth4"],
                &["eth1", "eth4"],
            ),
            (
                "on-link but down: all",
                "2001:db8:300::10",
                &["eth3", "eth4"],
                &["eth3", "eth4"],
            ),
            (
                "unknown interfaces stay",
                "198.51.100.200",
                &["eth9", "eth4"],
                &["eth9", "eth4"],
            ),
            ("single allowed", "203.0.113.10", &["eth4"], &["eth4"]),
        ];
        for (name, ip, allowed, want) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                on_link_interfaces(ip, &names(allowed), &links),
                names(want),
                "{name}"
            );
        }
        let desired = Announcements::from([
            (
                "198.51.100.200".parse().unwrap(),
                Arc::new(names(&["eth0", "eth1"])),
            ),
            (
                "198.51.100.201".parse().unwrap(),
                Arc::new(names(&["eth0", "eth1"])),
            ),
            (
                "203.0.113.10".parse().unwrap(),
                Arc::new(names(&["eth0", "eth4"])),
            ),
        ]);
        let narrowed = narrow_to_subnets(&desired, &links);
        let at = |ip: &str| &narrowed[&ip.parse::<IpAddr>().unwrap()];
        assert_eq!(*at("198.51.100.200"), Arc::new(names(&["eth0"])));
        assert!(
            Arc::ptr_eq(at("198.51.100.200"), at("198.51.100.201")),
            "IPs narrowed to one interface share its set"
        );
        assert_eq!(*at("203.0.113.10"), Arc::new(names(&["eth0", "eth4"])));
        assert!(
            Arc::ptr_eq(
                at("203.0.113.10"),
                &desired[&"203.0.113.10".parse().unwrap()]
            ),
            "a set not narrowed is the table's"
        );
    }
}
