//! DANM's IPAM algorithm, re-implemented here as the bench's baseline (a reference
//! implementation written from nokia/danm `pkg/ipam` for comparison, not DANM's code):
//!
//! * the network's whole allocation bit array is one base64 field (`spec.Options.alloc`) of
//!   the DanmNet object, most significant bit first, first and last address set;
//! * to allocate: read the DanmNet, scan for the next free bit from `allocation_pool.lastIp`
//!   (wrapping to the pool's start), set it, write the whole object back with its
//!   resourceVersion; on 409 Conflict read it again and redo, with no bound;
//! * then create the DanmEp naming the address (as DANM's CNI plugin does);
//! * to release: the same read-modify-write clearing the bit, then delete the DanmEp.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use danm_crds::{
    DanmEp, DanmEpIface, DanmEpSpec, DanmNet, DanmNetSpec, IpPool, NetworkOptions, NetworkSpec,
};
use ipnet::Ipv4Net;
use kube::api::{Api, DeleteParams, PostParams};

use danm_bench::load::Ipam;

/// The baseline against one DanmNet.
#[derive(Debug)]
pub struct DanmBaseline {
    nets: Api<DanmNet>,
    eps: Api<DanmEp>,
    name: String,
    cidr: Ipv4Net,
    /// Read-modify-write cycles redone after a 409 Conflict.
    pub retries: AtomicU64,
}

impl DanmBaseline {
    /// Creates the DanmNet `name` in `namespace` on `cidr` with an empty bit array and the
    /// whole subnet as its pool, as DANM's webhook initialises it.
    pub async fn create(
        client: kube::Client,
        namespace: &str,
        name: &str,
        cidr: Ipv4Net,
    ) -> anyhow::Result<DanmBaseline> {
        let len = 1usize << (32 - cidr.prefix_len());
        let nets: Api<DanmNet> = Api::namespaced(client.clone(), namespace);
        let hosts = cidr.hosts();
        let spec = NetworkSpec {
            network_id: name.into(),
            options: NetworkOptions {
                cidr: Some(cidr.to_string()),
                allocation_pool: Some(IpPool {
                    start: hosts.clone().next().map(|a| a.to_string()),
                    end: hosts.last().map(|a| a.to_string()),
                    last_ip: None,
                }),
                alloc: Some(danm_core::migrate::danm_bit_array(len, &[])),
                ..Default::default()
            },
            ..Default::default()
        };
        nets.create(
            &PostParams::default(),
            &DanmNet::new(name, DanmNetSpec { network: spec }),
        )
        .await
        .context("creating the baseline DanmNet")?;
        Ok(DanmBaseline {
            nets,
            eps: Api::namespaced(client, namespace),
            name: name.into(),
            cidr,
            retries: AtomicU64::new(0),
        })
    }

    /// Size of the DanmNet object as the API server stores it (JSON), in bytes.
    pub async fn object_bytes(&self) -> anyhow::Result<usize> {
        Ok(serde_json::to_vec(&self.nets.get(&self.name).await?)?.len())
    }

    /// DANM's read-modify-write loop: `change` edits the fetched object (false: nothing to
    /// write), the whole object is written back, a conflict starts over from a fresh read.
    async fn update<T>(
        &self,
        mut change: impl FnMut(&mut NetworkOptions) -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<Option<T>> {
        let mut net = self.nets.get(&self.name).await?;
        loop {
            let Some(out) = change(&mut net.spec.network.options)? else {
                return Ok(None);
            };
            match self
                .nets
                .replace(&self.name, &PostParams::default(), &net)
                .await
            {
                Ok(_) => return Ok(Some(out)),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    net = self.nets.get(&self.name).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn index_of(cidr: Ipv4Net, ip: Ipv4Addr) -> usize {
    (u32::from(ip) - u32::from(cidr.network())) as usize
}

fn get(bits: &[u8], i: usize) -> bool {
    bits[i / 8] & (0x80 >> (i % 8)) != 0
}

/// DANM's dynamic allocation: the next free bit from `lastIp` to the pool's end, then from
/// the pool's start; sets it and moves `lastIp` to it.
fn allocate_next(cidr: Ipv4Net, options: &mut NetworkOptions) -> anyhow::Result<Ipv4Addr> {
    let mut bits = BASE64.decode(options.alloc.as_deref().unwrap_or_default())?;
    let pool = options.allocation_pool.get_or_insert_with(IpPool::default);
    let parse = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<Ipv4Addr>().ok());
    let begin = index_of(cidr, parse(&pool.start).context("pool start")?);
    let end = index_of(cidr, parse(&pool.end).context("pool end")?);
    let mut from = parse(&pool.last_ip).map_or(0, |ip| index_of(cidr, ip));
    if from >= end || from == 0 {
        from = begin;
    }
    let free = (from..=end)
        .chain(begin..from)
        .find(|&i| !get(&bits, i))
        .context("all addresses are reserved")?;
    bits[free / 8] |= 0x80 >> (free % 8);
    let ip = Ipv4Addr::from(u32::from(cidr.network()) + free as u32);
    pool.last_ip = Some(ip.to_string());
    options.alloc = Some(BASE64.encode(&bits));
    Ok(ip)
}

#[async_trait]
impl Ipam for DanmBaseline {
    async fn allocate(&self, _caller: usize, cid: &str) -> anyhow::Result<String> {
        let cidr = self.cidr;
        let ip = self
            .update(|options| allocate_next(cidr, options).map(Some))
            .await?
            .expect("allocation always writes");
        let address = format!("{ip}/{}", cidr.prefix_len());
        let ep = DanmEp::new(
            &format!("danm-{cid}"),
            DanmEpSpec {
                network_name: self.name.clone(),
                network_type: "ipvlan".into(),
                endpoint_id: cid.into(),
                interface: DanmEpIface {
                    name: "eth0".into(),
                    address: address.clone(),
                    ..Default::default()
                },
                pod: format!("pod-{cid}"),
                cid: cid.into(),
                api_type: "DanmNet".into(),
                ..Default::default()
            },
        );
        self.eps.create(&PostParams::default(), &ep).await?;
        Ok(address)
    }

    async fn release(&self, _caller: usize, cid: &str, ip: &str) -> anyhow::Result<()> {
        let ip: Ipv4Addr = ip.split('/').next().unwrap_or_default().parse()?;
        let i = index_of(self.cidr, ip);
        self.update(|options| {
            let mut bits = BASE64.decode(options.alloc.as_deref().unwrap_or_default())?;
            if !get(&bits, i) {
                return Ok(None);
            }
            bits[i / 8] &= !(0x80 >> (i % 8));
            options.alloc = Some(BASE64.encode(&bits));
            Ok(Some(()))
        })
        .await?;
        self.eps
            .delete(&format!("danm-{cid}"), &DeleteParams::default())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_fit_from_last_ip_then_wraps() {
        let cidr: Ipv4Net = "10.0.0.0/29".parse().unwrap();
        let mut options = NetworkOptions {
            allocation_pool: Some(IpPool {
                start: Some("10.0.0.1".into()),
                end: Some("10.0.0.6".into()),
                last_ip: None,
            }),
            alloc: Some(danm_core::migrate::danm_bit_array(8, &[])),
            ..Default::default()
        };
        let got: Vec<Ipv4Addr> = (0..6)
            .map(|_| allocate_next(cidr, &mut options).unwrap())
            .collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(got[5], Ipv4Addr::new(10, 0, 0, 6));
        assert!(allocate_next(cidr, &mut options).is_err(), "pool is full");
    }
}
