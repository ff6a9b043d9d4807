"""The subnet the cluster runs in and the private addresses its instances get.

Addresses are chosen before launch so that every instance's user data can carry the complete
cluster config (hosts included): nothing has to be fetched or patched after boot.
"""
from __future__ import annotations

import ipaddress
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterable

from gati.cloud.spec import DeployError, DeploySpec


@dataclass(frozen=True)
class Subnet:
    id: str
    vpc_id: str
    cidr: str
    availability_zone: str


def find_subnet(ec2: Any, spec: DeploySpec) -> Subnet:
    """The configured subnet, else the default VPC's default subnet (in the configured zone).

    All instances share one subnet, so one availability zone: hops stay short and free of
    cross-zone transfer charges.
    """
    if spec.subnet_id:
        found = ec2.describe_subnets(SubnetIds=[spec.subnet_id])["Subnets"]
    else:
        filters = [{"Name": "default-for-az", "Values": ["true"]}]
        if spec.availability_zone:
            filters.append({"Name": "availability-zone", "Values": [spec.availability_zone]})
        found = ec2.describe_subnets(Filters=filters)["Subnets"]
    if not found:
        where = f"in {spec.availability_zone}" if spec.availability_zone else f"in {spec.region}"
        raise DeployError(f"no default subnet {where}: set subnet_id in the deployment file")
    s = sorted(found, key=lambda s: s["AvailabilityZone"])[0]
    return Subnet(s["SubnetId"], s["VpcId"], s["CidrBlock"], s["AvailabilityZone"])


def used_addresses(ec2: Any, subnet: Subnet) -> set[str]:
    pages = ec2.get_paginator("describe_network_interfaces").paginate(
        Filters=[{"Name": "subnet-id", "Values": [subnet.id]}])
    return {a["PrivateIpAddress"] for page in pages for eni in page["NetworkInterfaces"]
            for a in eni.get("PrivateIpAddresses", [])}


def free_addresses(subnet: Subnet, used: Iterable[str], count: int) -> list[str]:
    """The lowest `count` addresses that are neither in use nor reserved by AWS (the first
    four and the last of every subnet)."""
    net = ipaddress.ip_network(subnet.cidr)
    taken, out = set(used), []
    for ip in net.hosts():  # hosts() already leaves out the broadcast address
        if int(ip) - int(net.network_address) < 4:
            continue
        if str(ip) not in taken:
            out.append(str(ip))
            if len(out) == count:
                return out
    raise DeployError(f"subnet {subnet.id} ({subnet.cidr}) has fewer than {count} free addresses")


def this_machine_cidr(url: str = "https://checkip.amazonaws.com", timeout_s: float = 10.0) -> str:
    """This machine's public IPv4 address as a /32, for `allowed_cidr: auto`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read(64).decode().strip()
        return f"{ipaddress.IPv4Address(text)}/32"
    except (OSError, ValueError) as exc:
        raise DeployError(f"allowed_cidr: auto could not find this machine's public address "
                          f"({exc}); write the CIDR into the deployment file") from None
