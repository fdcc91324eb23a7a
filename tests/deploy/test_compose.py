"""docker-compose.kafka.yml parses and wires broker, worker, Prometheus and Grafana.

No Docker engine runs here, so the file is checked with a YAML parser."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    services = doc["services"]
    assert set(services) == {"kafka", "pulse", "deliver", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:3.9")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["pulse"]["environment"]["PULSE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert services["pulse"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    deliver = services["deliver"]
    assert deliver["command"] == ["pulse", "deliver"]
    assert deliver["environment"]["PULSE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert deliver["environment"]["PULSE_DELIVERY"] == "/etc/pulse/delivery.yaml"
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            host = volume.split(":", 1)[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), f"{name} mounts missing {host}"
    prom = yaml.safe_load((ROOT / "grafana/prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["pulse:6066"]
    assert prom["scrape_configs"][1]["static_configs"][0]["targets"] == ["deliver:6067"]
    assert (ROOT / "Dockerfile").exists()
