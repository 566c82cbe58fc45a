"""The AUTOMATIC1111 WebUI adapter: host glue between A1111 + sd-webui-animatediff and the I4VGen core.

Pure modules (``fields``, ``args``, ``infotext``, ``progress``) import nothing from the host. Host modules (``shim``,
``animatediff``, ``backbone``, ``anchor``, ``refine``, ``job``, ``ui``, ``ranking``) reach ``modules.*`` only
through ``shim``, which is imported lazily, so ``import i4vgen_ext.webui`` works anywhere."""
