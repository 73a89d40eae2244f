//! Object storage on a real engine: a 3-node Garage cluster on 127.0.0.1 (tests/support/garage.rs).
//! First that the cluster the other tests stand on behaves as a store should: it keeps and
//! returns objects through any node, refuses unsigned and wrongly signed requests, and goes on
//! serving with one node killed.

use crate::support::TestDir;
use crate::support::garage::GarageCluster;

/// Incompressible bytes, different per `seed`, so a wrong or truncated copy is seen.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn garage_cluster_stores_and_returns_an_object_through_every_node() {
    let t = TestDir::new();
    let cluster = GarageCluster::start(&t.path().join("garage"));
    // Bigger than Garage's 1 MiB block: the object is split and reassembled.
    let object = noise(1, 3 << 20);
    cluster.put_via(0, "images/a.squashfs", &object).unwrap();
    for node in 0..3 {
        assert_eq!(
            cluster.get_via(node, "images/a.squashfs").unwrap(),
            object,
            "node {node} returns another content"
        );
    }
    assert_eq!(cluster.list("images/"), vec!["images/a.squashfs"]);
    assert_eq!(cluster.get("images/absent"), None);

    // Unsigned, or signed with a wrong secret: refused, and nothing is written.
    let unsigned = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "{}/{}/images/a.squashfs",
            cluster.endpoint(),
            cluster.bucket
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&unsigned.stdout), "403");
    let (status, _) = cluster
        .request_as(
            1,
            "PUT",
            "images/forged",
            Some(b"forged"),
            &cluster.access_key,
            &"0".repeat(64),
        )
        .unwrap();
    assert_eq!(status, 403);
    assert_eq!(cluster.get("images/forged"), None);
}

#[test]
fn garage_cluster_serves_and_stores_with_one_node_killed() {
    let t = TestDir::new();
    let mut cluster = GarageCluster::start(&t.path().join("garage"));
    let before = noise(2, 2 << 20);
    cluster.put("before", &before);

    cluster.kill_node(2);
    assert!(!cluster.is_up(2));
    // Two of three replicas are a quorum: reads and writes go on through the nodes left.
    for node in 0..2 {
        assert_eq!(cluster.get_via(node, "before").unwrap(), before);
    }
    let during = noise(3, 2 << 20);
    cluster.put_via(1, "during", &during).unwrap();
    assert_eq!(cluster.get_via(0, "during").unwrap(), during);
    assert!(
        cluster.request(2, "GET", "during", None).is_err(),
        "the killed node still answers"
    );

    // Back with its data and ports: it serves what was written while it was down.
    cluster.start_node(2);
    assert_eq!(cluster.get_via(2, "during").unwrap(), during);
    assert_eq!(cluster.get_via(2, "before").unwrap(), before);
}
