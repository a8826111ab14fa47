"""Rules about infra/*.bicep that a parser can check and a deployment would otherwise find out
late (run by scripts/check-infra.sh with pycep-parser):

1. a conditional module's scope does not index into a split of a parameter: ARM evaluates the
   scope even when the condition is false (Azure/bicep#11463), so an empty parameter fails it;
2. an Event Grid system topic is located where its source (the storage account) is;
3. every resource name built from the prefix obeys its resource type's naming rule, for every
   prefix that scripts/deploy.sh accepts (its PREFIX_RULE), and the fixed container, queue and
   table names obey theirs;
4. a role assignment scoped to a whole storage account is for the Function App's own identity;
   anybody else (the deployer, Event Grid's topic) gets a role on one container.

Usage: check-infra-rules.py REPO_ROOT. Prints one line per broken rule; exits 1 if any.
"""

import re
import sys
from pathlib import Path

from pycep import BicepParser

ROOT = Path(sys.argv[1])
FAILURES = []


def fail(path, what):
    FAILURES.append(f"{path}: {what}")


def parse(path):
    return BicepParser().parse(text=(ROOT / path).read_text())


def walk(node):
    """Every dict and list inside a parsed expression."""
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


# Naming rules: https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules
NAME_RULES = {
    "Microsoft.Storage/storageAccounts": r"^[a-z0-9]{3,24}$",
    "Microsoft.KeyVault/vaults": r"^(?!.*--)[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$",
    "Microsoft.Web/sites": r"^[a-zA-Z0-9][a-zA-Z0-9-]{0,58}[a-zA-Z0-9]$",
    "Microsoft.Web/serverfarms": r"^[a-zA-Z0-9-]{1,60}$",
    "Microsoft.OperationalInsights/workspaces": r"^[a-zA-Z0-9][a-zA-Z0-9-]{2,61}[a-zA-Z0-9]$",
    "Microsoft.Insights/components": r"^[^%&\\?/]{1,260}$",
    "Microsoft.EventGrid/systemTopics": r"^[a-zA-Z0-9-]{3,128}$",
}
CONTAINER_RULE = r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
QUEUE_RULE = CONTAINER_RULE
TABLE_RULE = r"^[A-Za-z][A-Za-z0-9]{2,62}$"
# uniqueString() is 13 characters of [a-z0-9].
SUFFIXES = ["a" * 13, "0" * 13]
# Candidates tried against deploy.sh's PREFIX_RULE; every accepted one must make valid names.
PREFIX_CANDIDATES = ["abc", "a00", "000", "0ab", "9zz", "abcdefghijk", "a0000000000", "z9999999999",
                     "ab", "abcdefghijkl", "a-b", "ABC"]


class Evaluator:
    """Evaluates the few expression forms resource names use: strings with ${...}
    interpolation, variable and parameter references, and take()."""

    def __init__(self, parsed, values):
        self.variables = parsed.get("variables", {})
        self.values = values

    def eval(self, node):
        if isinstance(node, int):
            return node
        if isinstance(node, str):
            if node in self.values:
                return self.values[node]
            if node in self.variables:
                return self.eval(self.variables[node]["value"])
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.eval(m.group(1))), node)
        if isinstance(node, dict) and "function" in node:
            fn = node["function"]
            if fn["type"] == "take":
                p = fn["parameters"]
                return self.eval(p["original_value"])[: self.eval(p["number_to_take"])]
        raise ValueError(f"cannot evaluate {node!r}")


def body(resource):
    """A resource's properties, under its condition when it has one."""
    config = resource["config"]
    return config["config"] if "condition" in config else config


def check_conditional_scopes(path, parsed):
    params = set(parsed.get("parameters", {}))
    for name, module in parsed.get("modules", {}).items():
        config = module["config"]
        if "condition" not in config:
            continue
        for node in walk(config["config"].get("scope", {})):
            if isinstance(node, dict) and node.get("type") == "split":
                source = node["parameters"]["input_string"]
                if isinstance(source, str) and source in params:
                    fail(path, f"module {name}: its scope splits the parameter {source}, which ARM "
                               "evaluates even when the module's condition is false; split a "
                               "variable that is valid when the parameter is empty")
                    break


def check_topic_locations(path, parsed):
    for name, resource in parsed.get("resources", {}).items():
        if resource["type"] != "Microsoft.EventGrid/systemTopics":
            continue
        config = body(resource)
        source = config["properties"]["source"]
        location = config.get("location")
        source_symbol = source["operator"]["operands"]["operand_1"] if isinstance(source, dict) else None
        ok = (isinstance(location, dict)
              and location.get("operator", {}).get("type") == "property_accessor"
              and location["operator"]["operands"]["operand_1"] == source_symbol
              and location["operator"]["operands"]["operand_2"] == "location")
        if not ok:
            fail(path, f"system topic {name} must be located where its source is "
                       f"(location: {source_symbol}.location), not {location!r}")


def prefix_rule():
    text = (ROOT / "scripts/deploy.sh").read_text()
    m = re.search(r"^PREFIX_RULE='([^']+)'", text, re.M)
    if not m:
        fail("scripts/deploy.sh", "has no PREFIX_RULE='...' line to check prefixes against")
        return None
    return re.compile(m.group(1))


def check_names(path, parsed, rule, extra_values=None):
    accepted = [p for p in PREFIX_CANDIDATES if rule.fullmatch(p)]
    if not accepted:
        fail("scripts/deploy.sh", "PREFIX_RULE accepts none of the sample prefixes")
    for prefix in accepted:
        for suffix in SUFFIXES:
            values = {"prefix": prefix, "suffix": suffix, **(extra_values or {})}
            ev = Evaluator(parsed, values)
            for name, resource in parsed.get("resources", {}).items():
                rtype = resource["type"]
                if rtype not in NAME_RULES or resource.get("existing"):
                    continue
                try:
                    value = ev.eval(body(resource)["name"])
                except ValueError:
                    continue
                if not re.fullmatch(NAME_RULES[rtype], value):
                    fail(path, f"prefix {prefix!r} (accepted by deploy.sh) makes {rtype} name "
                               f"{value!r}, which breaks its naming rule {NAME_RULES[rtype]}")
    variables = parsed.get("variables", {})
    ev = Evaluator(parsed, {"prefix": "abc", "suffix": SUFFIXES[0]})
    for var, rule_text in [("containers", CONTAINER_RULE), ("tables", TABLE_RULE)]:
        if var in variables:
            for item in variables[var]["value"]:
                value = ev.eval(item)
                if not re.fullmatch(rule_text, value):
                    fail(path, f"{var}: {value!r} breaks the naming rule {rule_text}")
    for var in ["importQueue", "exportQueue", "packageContainerName"]:
        if var in variables:
            value = ev.eval(variables[var]["value"])
            if not re.fullmatch(QUEUE_RULE, value):
                fail(path, f"{var}: {value!r} breaks the naming rule {QUEUE_RULE}")


def check_role_scopes(path, parsed):
    resources = parsed.get("resources", {})
    for name, resource in resources.items():
        if resource["type"] != "Microsoft.Authorization/roleAssignments":
            continue
        config = body(resource)
        scope = config.get("scope")
        if not isinstance(scope, str) or scope not in resources:
            continue
        if resources[scope]["type"] != "Microsoft.Storage/storageAccounts":
            continue
        principal = config["properties"]["principalId"]
        is_app = any(isinstance(n, dict) and n.get("operand_1") == "app" for n in walk(principal))
        if not is_app:
            fail(path, f"role assignment {name} gives a principal other than the Function App a "
                       "role on the whole storage account (its data, the host's keys, the "
                       "package); scope it to the container it needs")


def main():
    rule = prefix_rule()
    main_bicep = parse("infra/main.bicep")
    eventgrid = parse("infra/eventgrid.bicep")
    for path, parsed in [("infra/main.bicep", main_bicep), ("infra/eventgrid.bicep", eventgrid)]:
        check_conditional_scopes(path, parsed)
        check_topic_locations(path, parsed)
        check_role_scopes(path, parsed)
    if rule:
        check_names("infra/main.bicep", main_bicep, rule)
        # The system topic is named after the storage account main.bicep names.
        for prefix in [p for p in PREFIX_CANDIDATES if rule.fullmatch(p)]:
            storage = Evaluator(main_bicep, {"prefix": prefix, "suffix": SUFFIXES[0]}).eval("storageName")
            check_names("infra/eventgrid.bicep", eventgrid, rule, {"storageAccountName": storage})
    for line in FAILURES:
        print(f"check-infra.sh: {line}", file=sys.stderr)
    if not FAILURES:
        print("check-infra.sh: conditional scopes, topic location, resource names and role scopes "
              "follow the rules", file=sys.stderr)
    sys.exit(1 if FAILURES else 0)


main()
