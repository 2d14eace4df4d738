"""``hops-qa``: statistical QA of the phantom series HOPS stores in Graphite.

:mod:`.control` (numpy: baselines, limits, Western Electric/Nelson rules, EWMA, CUSUM) →
:mod:`.evaluate` (phases from service events, tolerance/action levels, missed scans, the
``hops.qa.*`` result metrics) with :mod:`.config` (validated TOML), :mod:`.events` (durable
service events, posted to graphite-web), :mod:`.graphiteweb` (render and events API),
:mod:`.report` (HTML/PDF control-chart report) and :mod:`.simulate` (operating
characteristics); :mod:`.cli` is the ``hops-qa`` command.
"""
