//! A rogue host on the lab LAN: no node, no client, just a machine that already uses an
//! address of a pool (a forgotten printer, a VM, a router's VRRP address), or starts to.
//!
//! ```text
//!   <id>-rogueN   eth0 02:00:00:00:99:0N   198.51.100.10N/24   2001:db8:100::10N/64
//!     hold(ip)     ip addr add ip/32 | ip/128 nodad   its kernel answers ARP requests and
//!                                                     probes, NSs and DAD NSs for ip; silent
//!                                                     itself (no arp_notify / ndisc_notify)
//!     claim(ip)    one gratuitous ARP (RFC 5227 §3) / unsolicited NA (RFC 4861 §7.2.6)
//!     release(ip)  ip addr del: nobody answers for the rogue any more
//! ```
//! `nodad` keeps an IPv6 address the rogue's kernel would otherwise give up when a speaker's
//! announcement says someone else holds it. The rogue's namespace is one of the lab's: it goes
//! when the lab does, also on panic, and a crashed run's is removed with the other leftovers.

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use pnet_base::MacAddr;

use crate::lab::{Host, Lab};
use crate::{netns, observe, packet};

/// A rogue host; its namespace belongs to the lab that made it.
#[derive(Clone, Debug)]
pub struct Rogue {
    host: Host,
}

impl Rogue {
    /// Attaches rogue `n` (1–9) to `lab`'s LAN: namespace `<id>-rogue<n>`, MAC
    /// 02:00:00:00:99:0n, LAN addresses 198.51.100.10n and 2001:db8:100::10n.
    pub fn join(lab: &mut Lab, n: u8) -> Result<Rogue> {
        ensure!((1..10).contains(&n), "rogues are numbered 1–9");
        let mac = MacAddr::new(0x02, 0, 0, 0, 0x99, n);
        let host = lab
            .attach_host(&format!("rogue{n}"), &format!("r{n}"), 100 + n, Some(mac))
            .with_context(|| format!("attach rogue{n} to the LAN"))?;
        Ok(Rogue { host })
    }

    /// The rogue as a LAN host (namespace, addresses, MAC).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Its MAC, as FerroLB names it in an `AddressConflict` (lowercase, colons).
    pub fn mac(&self) -> MacAddr {
        self.host.mac
    }

    /// Starts using `ip`: its kernel answers for it from now on, sending nothing itself.
    pub fn hold(&self, ip: IpAddr) -> Result<()> {
        let addr = format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 });
        let mut args = vec!["addr", "add", &addr, "dev", "eth0"];
        if ip.is_ipv6() {
            args.push("nodad");
        }
        netns::ip_in(&self.host.ns, &args)
            .map(drop)
            .with_context(|| format!("{} takes {ip}", self.host.name))
    }

    /// Stops using `ip`: its kernel no longer answers for it.
    pub fn release(&self, ip: IpAddr) -> Result<()> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        netns::ip_in(
            &self.host.ns,
            &["addr", "del", &format!("{ip}/{prefix}"), "dev", "eth0"],
        )
        .map(drop)
        .with_context(|| format!("{} gives up {ip}", self.host.name))
    }

    /// Claims `ip` on the LAN once: a gratuitous ARP (sender and target IP both `ip`) or an
    /// unsolicited NA for it (Override set), naming the rogue's MAC. Returns the instant just
    /// before the send.
    pub fn claim(&self, ip: IpAddr) -> Result<Instant> {
        let frame = match ip {
            IpAddr::V4(v4) => packet::gratuitous_arp(self.host.mac, v4),
            IpAddr::V6(v6) => packet::unsolicited_na(self.host.mac, v6),
        };
        let t = Instant::now();
        observe::send(&self.host.ns, "eth0", vec![frame])
            .with_context(|| format!("{} claims {ip}", self.host.name))?;
        Ok(t)
    }
}
