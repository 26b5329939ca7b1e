"""Drives moto (server mode) for the AWS interop test. Python because boto3 is the client
the test must prove compatible; everything here talks to 127.0.0.1 only.

  moto_setup.py vendor URL              -> creates the vendor IAM user + key; prints JSON
  moto_setup.py roles URL EXTERNAL_ID   -> creates the customer roles; prints JSON
  moto_setup.py web_role URL HOST SUB   -> creates the IAM OIDC provider for the broker's
                                           issuer HOST and a role trusting it for SUB; prints
                                           JSON
  moto_setup.py whoami URL PROFILE      -> boto3 with the AWS_CONFIG_FILE profile (whose
                                           credential_process is credbroker) calls
                                           sts.get_caller_identity(); prints the ARN
"""
import json
import sys

import boto3

ACCOUNT = "123456789012"  # moto's default account: vendor and customer share it here


def client(service, url, **kw):
    kw.setdefault("aws_access_key_id", "AKIASETUPNOTCHECKED0")
    kw.setdefault("aws_secret_access_key", "setup")
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", **kw)


def vendor(url):
    iam = client("iam", url)
    iam.create_user(UserName="credbroker-vendor")
    iam.put_user_policy(
        UserName="credbroker-vendor",
        PolicyName="assume-customer-roles",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}),
    )
    key = iam.create_access_key(UserName="credbroker-vendor")["AccessKey"]
    print(json.dumps({"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}))


def trust(external_id):
    # moto matches the principal ARN literally (it does not expand account roots), so the
    # role trusts the vendor user; the ExternalId condition is the one the shipped template uses.
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/credbroker-vendor"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
    }]})


def roles(url, external_id):
    iam = client("iam", url)
    good = iam.create_role(RoleName="CredbrokerAccess", AssumeRolePolicyDocument=trust(external_id),
                           MaxSessionDuration=3600)["Role"]["Arn"]
    wrong = iam.create_role(RoleName="OtherTenantRole",
                            AssumeRolePolicyDocument=trust("AnotherTenantsExternalId0123456789abcd"),
                            MaxSessionDuration=3600)["Role"]["Arn"]
    print(json.dumps({"role_arn": good, "wrong_role_arn": wrong}))


def web_role(url, host, sub):
    # What credbroker-role-web-identity.json creates: the OIDC provider and a role trusting
    # it with aud and sub pinned (moto stores the conditions but does not evaluate them).
    iam = client("iam", url)
    provider = iam.create_open_id_connect_provider(
        Url=f"https://{host}", ClientIDList=["sts.amazonaws.com"],
        ThumbprintList=["0" * 40])["OpenIDConnectProviderArn"]
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Federated": provider},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {f"{host}:aud": "sts.amazonaws.com", f"{host}:sub": sub}},
    }]})
    arn = iam.create_role(RoleName="CredbrokerAccess", AssumeRolePolicyDocument=trust,
                          MaxSessionDuration=3600)["Role"]["Arn"]
    print(json.dumps({"role_arn": arn, "provider_arn": provider}))


def whoami(url, profile):
    session = boto3.Session(profile_name=profile)
    sts = session.client("sts", endpoint_url=url, region_name="us-east-1")
    print(sts.get_caller_identity()["Arn"])


if __name__ == "__main__":
    cmd, url = sys.argv[1], sys.argv[2]
    if cmd == "vendor":
        vendor(url)
    elif cmd == "roles":
        roles(url, sys.argv[3])
    elif cmd == "web_role":
        web_role(url, sys.argv[3], sys.argv[4])
    elif cmd == "whoami":
        whoami(url, sys.argv[3])
    else:
        sys.exit(f"unknown command {cmd}")
