//! Choosing the underlay at start: `[dataplane] underlay` and what this
//! host allows.
//!
//! The underlays, fastest first: `xdp` (AF_XDP both ways), `packet`
//! (AF_PACKET transmit), `raw` (raw IP sockets both ways). `xdp` and `auto`
//! try them in that order and run the first that can be set up; `packet`
//! starts at `packet`, `raw` is `raw`. A step down is logged once, with the
//! reason, and `tunl status` and the metrics say what runs and why.
//!
//! `xdp` is set up here, before the privileges are dropped (loading and
//! attaching the program need `CAP_BPF` and `CAP_NET_ADMIN`, the sockets
//! `CAP_NET_RAW`): the program is loaded for `tunnel.local`, attached to
//! the device holding it through tunl's own BPF link (never replacing
//! another program), and one AF_XDP socket is bound per RX queue the
//! device really uses. It cannot be set up when there is no such device,
//! it is not Ethernet, its MTU does not fit a UMEM chunk, or any of those
//! steps fails.

use tracing::{info, warn};
use tunl_io::xdp::{self, XdpLink, XdpMode, XdpProgram, Xsk};

use super::startup::Underlay as UnderlayDevice;
use crate::config::{Config, Underlay, XdpModeSetting};
use crate::control::UnderlayStatus;

/// The underlay running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Running {
    /// AF_XDP sockets (workers beyond the queues transmit through AF_PACKET).
    Xdp,
    /// AF_PACKET transmit, raw receive.
    Packet,
    /// Raw sockets both ways.
    Raw,
}

impl Running {
    fn as_str(self) -> &'static str {
        match self {
            Running::Xdp => "xdp",
            Running::Packet => "packet",
            Running::Raw => "raw",
        }
    }
}

/// The XDP underlay, set up.
pub(super) struct XdpSetup {
    /// The program, loaded (its maps stay open here).
    pub program: XdpProgram,
    /// Its attachment to the device: dropping it detaches.
    pub link: XdpLink,
    /// One socket per RX queue, in queue order.
    pub sockets: Vec<Xsk>,
    /// The device's MAC.
    pub src_mac: [u8; 6],
}

/// What [`select`] chose.
pub(super) struct Selected {
    /// The XDP underlay, when `running` is `Xdp`.
    pub xdp: Option<XdpSetup>,
    /// The device AF_PACKET transmits on (with `Xdp`, for the workers
    /// without a socket, and with `Packet`).
    pub packet_ifindex: Option<u32>,
    /// For `status`.
    pub status: UnderlayStatus,
}

/// Sets up the underlay `config` asks for, stepping down (and logging why,
/// once) when it cannot: see the module documentation.
pub(super) fn select(config: &Config, device: Option<&UnderlayDevice>, workers: usize) -> Selected {
    select_with(config, device, workers, probe_packet_socket)
}

/// [`select`] with the check that an AF_PACKET socket opens given (tests
/// run without the privilege to open one).
fn select_with(
    config: &Config,
    device: Option<&UnderlayDevice>,
    workers: usize,
    probe_packet: impl Fn(&UnderlayDevice) -> Result<(), String>,
) -> Selected {
    let requested = config.dataplane.underlay();
    let mut status = UnderlayStatus {
        requested: requested.as_str().to_owned(),
        ..UnderlayStatus::default()
    };
    let mut fallback: Option<String> = None;
    if matches!(requested, Underlay::Xdp | Underlay::Auto) {
        match device
            .ok_or_else(|| "tunnel.local is on no interface".to_owned())
            .and_then(|d| open_xdp(config, d))
        {
            Ok(setup) => {
                status.running = Running::Xdp.as_str().to_owned();
                status.xdp_mode = Some(setup.link.mode().to_string());
                status.xdp_sockets = setup.sockets.len();
                status.xdp_workers = setup.sockets.len().min(workers);
                info!(
                    device = device.map(|d| d.name.as_str()),
                    mode = %setup.link.mode(),
                    sockets = setup.sockets.len(),
                    "underlay: xdp"
                );
                return Selected {
                    packet_ifindex: device.map(|d| d.ifindex),
                    xdp: Some(setup),
                    status,
                };
            }
            Err(why) => {
                let why = format!("xdp: {why}");
                if requested == Underlay::Xdp {
                    warn!("underlay: {why}; using packet");
                } else {
                    info!("underlay auto: {why}; trying packet");
                }
                fallback = Some(why);
            }
        }
    }
    let packet = match (requested, device) {
        (Underlay::Raw, _) => None,
        (_, Some(d)) if d.ethernet => Some(probe_packet(d)),
        (_, Some(d)) => Some(Err(format!("{} is not an Ethernet device", d.name))),
        (_, None) => Some(Err("tunnel.local is on no interface".to_owned())),
    };
    let running = match packet {
        None => Running::Raw,
        Some(Ok(())) => Running::Packet,
        Some(Err(why)) => {
            let why = format!("packet: {why}");
            warn!("underlay: {why}; using raw");
            fallback = Some(match fallback {
                Some(f) => format!("{f}; {why}"),
                None => why,
            });
            Running::Raw
        }
    };
    status.running = running.as_str().to_owned();
    status.fallback = fallback;
    Selected {
        xdp: None,
        packet_ifindex: (running == Running::Packet)
            .then(|| device.map(|d| d.ifindex))
            .flatten(),
        status,
    }
}

/// Whether an AF_PACKET socket can be opened on `device` (a sandbox may
/// forbid the address family): the workers open theirs after the
/// privilege drop, when stepping down would be too late.
fn probe_packet_socket(device: &UnderlayDevice) -> Result<(), String> {
    tunl_io::PacketSender::open(device.ifindex, 0)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The modes to try, in order, for `setting` on a device with `driver`:
/// auto prefers generic on veth (measured faster there), native elsewhere
/// with generic behind it.
pub(super) fn modes_to_try(setting: XdpModeSetting, driver: Option<&str>) -> &'static [XdpMode] {
    match setting {
        XdpModeSetting::Generic => &[XdpMode::Generic],
        XdpModeSetting::Native => &[XdpMode::Native],
        XdpModeSetting::Auto if driver == Some("veth") => &[XdpMode::Generic],
        XdpModeSetting::Auto => &[XdpMode::Native, XdpMode::Generic],
    }
}

/// Loads, attaches and binds the XDP underlay on `device`; the error says
/// why it cannot run.
fn open_xdp(config: &Config, device: &UnderlayDevice) -> Result<XdpSetup, String> {
    let name = &device.name;
    if !device.ethernet {
        return Err(format!("{name} is not an Ethernet device"));
    }
    if device.mtu > xdp::MAX_UNDERLAY_MTU {
        return Err(format!(
            "{name} has MTU {}; AF_XDP frames hold at most {} (one {}-byte UMEM chunk)",
            device.mtu,
            xdp::MAX_UNDERLAY_MTU,
            xdp::XSK_FRAME
        ));
    }
    let src_mac = tunl_io::link::hardware_address(name).map_err(|e| format!("{name}: {e}"))?;
    let driver = tunl_io::link::driver(name).ok();
    let mut program = XdpProgram::load(config.tunnel.local).map_err(|e| e.to_string())?;
    let mut last = None;
    let mut link = None;
    for &mode in modes_to_try(config.dataplane.xdp_mode, driver.as_deref()) {
        match program.attach(device.ifindex, mode) {
            Ok(l) => {
                link = Some(l);
                break;
            }
            // Nothing to gain from another mode if a program is there.
            Err(e) if e.is_already_attached() => return Err(format!("{name}: {e}")),
            Err(e) => last = Some(e),
        }
    }
    let Some(link) = link else {
        return Err(last.map_or_else(|| "no mode to try".to_owned(), |e| format!("{name}: {e}")));
    };
    let queues = tunl_io::link::rx_queues(name)
        .unwrap_or(1)
        .min(xdp::MAX_QUEUES);
    let mut sockets = Vec::new();
    for queue in 0..queues {
        let socket = Xsk::bind(device.ifindex, queue).and_then(|s| {
            program.add_socket(&s)?;
            Ok(s)
        });
        match socket {
            Ok(s) => sockets.push(s),
            // The queues without a socket reach the raw socket.
            Err(e) if queue > 0 => {
                warn!(queue, error = %e, "no AF_XDP socket for this queue; its frames take the raw socket");
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(XdpSetup {
        program,
        link,
        sockets,
        src_mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_on_veth_native_elsewhere() {
        assert_eq!(
            modes_to_try(XdpModeSetting::Auto, Some("veth")),
            [XdpMode::Generic]
        );
        assert_eq!(
            modes_to_try(XdpModeSetting::Auto, Some("virtio_net")),
            [XdpMode::Native, XdpMode::Generic]
        );
        assert_eq!(
            modes_to_try(XdpModeSetting::Auto, None),
            [XdpMode::Native, XdpMode::Generic]
        );
        assert_eq!(
            modes_to_try(XdpModeSetting::Native, Some("veth")),
            [XdpMode::Native]
        );
        assert_eq!(
            modes_to_try(XdpModeSetting::Generic, Some("mlx5_core")),
            [XdpMode::Generic]
        );
    }

    fn config(extra: &str) -> Config {
        let text = format!("[tunnel]\nlocal = \"172.16.35.4\"\n[dataplane]\n{extra}\n");
        Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn device(ethernet: bool, mtu: u32) -> UnderlayDevice {
        UnderlayDevice {
            ifindex: 2,
            name: "eth0".to_owned(),
            mtu,
            ethernet,
        }
    }

    fn select(config: &Config, device: Option<&UnderlayDevice>, workers: usize) -> Selected {
        select_with(config, device, workers, |_| Ok(()))
    }

    #[test]
    fn a_packet_socket_that_cannot_open_steps_down_to_raw() {
        let s = select_with(
            &config("underlay = \"packet\""),
            Some(&device(true, 1500)),
            1,
            |_| Err("Address family not supported by protocol".to_owned()),
        );
        assert_eq!((s.status.running.as_str(), s.packet_ifindex), ("raw", None));
        let why = s.status.fallback.unwrap();
        assert_eq!(why, "packet: Address family not supported by protocol");
    }

    #[test]
    fn raw_and_packet_need_no_setup() {
        let s = select(&config("underlay = \"raw\""), Some(&device(true, 1500)), 1);
        assert_eq!((s.status.running.as_str(), s.packet_ifindex), ("raw", None));
        let s = select(
            &config("underlay = \"packet\""),
            Some(&device(true, 1500)),
            1,
        );
        assert_eq!(
            (s.status.running.as_str(), s.packet_ifindex),
            ("packet", Some(2))
        );
        assert_eq!(s.status.fallback, None);
        // AF_PACKET needs an Ethernet device.
        let s = select(
            &config("underlay = \"packet\""),
            Some(&device(false, 1500)),
            1,
        );
        assert_eq!(s.status.running, "raw");
        assert!(
            s.status
                .fallback
                .unwrap()
                .contains("not an Ethernet device")
        );
    }

    #[test]
    fn xdp_steps_down_with_the_reason() {
        // Checked before anything is loaded: no privilege needed.
        let s = select(&config("underlay = \"xdp\""), Some(&device(true, 9000)), 2);
        assert!(s.xdp.is_none());
        assert_eq!(
            (s.status.requested.as_str(), s.status.running.as_str()),
            ("xdp", "packet")
        );
        let why = s.status.fallback.unwrap();
        assert!(why.starts_with("xdp: eth0 has MTU 9000"), "{why}");
        let s = select(
            &config("underlay = \"auto\""),
            Some(&device(false, 1500)),
            2,
        );
        assert_eq!(s.status.running, "raw");
        let why = s.status.fallback.unwrap();
        assert!(why.contains("xdp: eth0 is not an Ethernet device"), "{why}");
        assert!(
            why.contains("packet: eth0 is not an Ethernet device"),
            "{why}"
        );
        let s = select(&config("underlay = \"auto\""), None, 1);
        assert_eq!(s.status.running, "raw");
    }
}
