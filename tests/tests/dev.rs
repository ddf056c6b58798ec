//! `amisim dev` as a user runs it: one process, three regions, the gateway on one port.

use std::time::Duration;

use amisim_proto::*;
use amisim_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn gateway_routes_calls_to_the_region_in_the_metadata() {
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path(), &["--seed", "7"]);
    assert_eq!(
        dev.regions.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ap-south-1", "eu-west-1", "us-east-1"]
    );
    assert_eq!(
        dev.seeds.get("us-east-1"),
        Some(&7),
        "{}",
        dev.process.logs()
    );
    let mut ec2 = ec2(&dev.gateway).await;

    let us = register_image(&mut ec2, "us-east-1", "base image us")
        .await
        .expect("register in us-east-1");
    let eu = register_image(&mut ec2, "eu-west-1", "base image eu")
        .await
        .expect("register in eu-west-1");
    assert!(
        us.consistency_token.starts_with("us-east-1:"),
        "token {:?}",
        us.consistency_token
    );
    assert!(
        eu.consistency_token.starts_with("eu-west-1:"),
        "token {:?}",
        eu.consistency_token
    );

    for (region, mine, other) in [
        ("us-east-1", &us.image_id, &eu.image_id),
        ("eu-west-1", &eu.image_id, &us.image_id),
    ] {
        let image = describe_image(&mut ec2, region, mine).await.unwrap();
        assert_eq!(image.image_id, *mine);
        assert_eq!(image.owner_id, ACCOUNT);
        assert!(
            ["pending", "available"].contains(&image.state.as_str()),
            "{image:?}"
        );
        // AMI ids are regional: the other region's image is not found here.
        let res = ec2
            .describe_images(req(
                DescribeImagesRequest {
                    image_ids: vec![other.clone()],
                    ..Default::default()
                },
                region,
            ))
            .await;
        expect_ec2_error(
            "other region's image",
            res,
            Code::NotFound,
            "InvalidAMIID.NotFound",
        );
    }

    // Request metadata reaches the region and response metadata comes back.
    let mut r = req(DescribeImagesRequest::default(), "eu-west-1");
    r.metadata_mut()
        .insert("x-amisim-request-id", "my-request-1".parse().unwrap());
    let resp = ec2.describe_images(r).await.unwrap();
    assert_eq!(meta(&resp, "x-amisim-request-id"), "my-request-1");
    let names: Vec<_> = resp
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["base image eu"]);

    // Another account sees none of these private images.
    let resp = ec2
        .describe_images(req_as(
            DescribeImagesRequest::default(),
            "us-east-1",
            "210987654321",
        ))
        .await
        .unwrap();
    assert!(resp.into_inner().images.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_region_fails_with_invalid_region() {
    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path(), &[]);
    let mut ec2 = ec2(&dev.gateway).await;
    let res = ec2
        .describe_images(req(DescribeImagesRequest::default(), "xx-1"))
        .await;
    let s = expect_ec2_error("xx-1", res, Code::InvalidArgument, "InvalidRegion");
    assert_eq!(
        s.message(),
        "InvalidRegion: Unknown region 'xx-1'; known regions: ap-south-1, eu-west-1, us-east-1"
    );
    // A write to an unknown region writes nowhere.
    let res = ec2
        .create_volume(req(volume_request("xx-1", 8), "xx-1"))
        .await;
    expect_ec2_error("xx-1 write", res, Code::InvalidArgument, "InvalidRegion");
    for url in dev.regions.values() {
        assert_eq!(head_seq(&mut region_admin(url).await).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_serves_health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let data = tempfile::tempdir().unwrap();
    let dev = start_dev(data.path(), &[]);
    let channel = connect(&dev.gateway).await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "amisim.v1.Ec2"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }
    let mut reflection = ServerReflectionClient::new(channel);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "amisim.v1.Ec2"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_a_restart_resumes_from_the_logs() {
    let data = tempfile::tempdir().unwrap();
    let mut dev = start_dev(data.path(), &[]);
    let image_id = {
        let mut ec2 = ec2(&dev.gateway).await;
        register_image(&mut ec2, "ap-south-1", "kept across restarts")
            .await
            .expect("register")
            .image_id
    };
    let status = dev.process.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit {status:?}\n{}", dev.process.logs());
    assert!(
        dev.process.stdout_text().contains("amisim dev: stopped"),
        "{}",
        dev.process.logs()
    );
    for region in ["us-east-1", "eu-west-1", "ap-south-1"] {
        assert!(data.path().join(region).is_dir(), "no log dir for {region}");
    }

    let dev = start_dev(data.path(), &[]);
    let mut ec2 = ec2(&dev.gateway).await;
    let image = describe_image(&mut ec2, "ap-south-1", &image_id)
        .await
        .expect("image after restart");
    assert_eq!(image.name, "kept across restarts");
    // Timers re-armed from the log: the image becomes available after the restart.
    eventually("image available", Duration::from_secs(30), || {
        let mut ec2 = ec2.clone();
        let id = image_id.clone();
        async move {
            let i = describe_image(&mut ec2, "ap-south-1", &id).await.ok()?;
            (i.state == "available").then_some(())
        }
    })
    .await;
}
