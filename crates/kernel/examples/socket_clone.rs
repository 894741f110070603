//! What `accept()` does with a listening socket's local storage, step by step.
//!
//! Run with `cargo run --example socket_clone`. Socket storage maps created with
//! `BPF_F_CLONE` are copied to every socket the listener accepts; the others are not. Each
//! socket pays for its own storage out of `optmem_max` (the charge shown after each step), and
//! the charge returns to zero when the socket closes.

use bpfls_kernel::{Kernel, MapType, ResultExt};
use bpfls_local_storage::flags::{BPF_ANY, MapFlags};
use bpfls_local_storage::{Errno, MapAttr};

fn show(k: &Kernel, what: &str, maps: &[(&str, i32)], socks: &[(&str, i32)]) {
    println!("{what}");
    for &(sname, s) in socks {
        let mut line = format!("  {sname:<9} charge {:>4} B |", k.socket_charge(s).unwrap());
        for &(mname, m) in maps {
            let v = match k.map_lookup_elem(0, m, s) {
                Ok(v) => format!("{}", u64::from_le_bytes(v.try_into().unwrap())),
                Err(e) => format!("{e:?}"),
            };
            line += &format!(" {mname} = {v:<7}");
        }
        println!("{}", line.trim_end());
    }
}

fn main() {
    let k = Kernel::builder().optmem_max(20480).build();
    let clone = (MapFlags::NO_PREALLOC | MapFlags::CLONE).bits();
    let session = k.map_create(MapType::Sk, MapAttr::new(8).with_flags(clone)).unwrap();
    let scratch = k.map_create(MapType::Sk, MapAttr::new(8)).unwrap();
    let maps = [("session", session), ("scratch", scratch)];
    let (_, listener) = k.socket_create();

    show(&k, "1. A listening socket, no storage yet:", &maps, &[("listener", listener)]);

    k.map_update_elem(0, session, listener, &42u64.to_le_bytes(), BPF_ANY).unwrap();
    k.map_update_elem(0, scratch, listener, &7u64.to_le_bytes(), BPF_ANY).unwrap();
    show(
        &k,
        "\n2. Values in both maps (the first allocates the storage, so it costs more):",
        &maps,
        &[("listener", listener)],
    );

    let (_, child) = k.socket_accept(1, listener).unwrap();
    show(
        &k,
        "\n3. accept(): the child gets a copy of the BPF_F_CLONE map's value only, and is charged\n   for its own storage:",
        &maps,
        &[("listener", listener), ("child", child)],
    );

    k.map_update_elem(1, session, child, &43u64.to_le_bytes(), BPF_ANY).unwrap();
    show(
        &k,
        "\n4. The copy is independent: updating the child leaves the listener alone:",
        &maps,
        &[("listener", listener), ("child", child)],
    );

    k.socket_close(1, child).unwrap();
    println!(
        "\n5. Closing the child destroys its storage at once (no grace period: the socket is gone)."
    );
    println!("   Its fd is closed: a lookup now gets {:?}.", Errno::EBADF);
    assert_eq!(k.map_lookup_elem(0, session, child).errno(), Err(Errno::EBADF));

    k.socket_close(0, listener).unwrap();
    k.close(0, session).unwrap();
    k.close(0, scratch).unwrap();
    let leaked = k.shutdown().unwrap();
    println!("\nDone: {leaked} objects leaked, {} violations.", k.violations().snapshot().len());
    assert!(leaked == 0 && k.violations().is_empty());
}
