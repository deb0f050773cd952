"""The driver API's machinery: hook contracts (``hookspecs``), the typed facade
(``hooks``), loading and the fstype registry (``loader``), what a driver declares
(``base``), the tracing plugin. Drivers import the public surface, :mod:`criu_fw.driver`."""
