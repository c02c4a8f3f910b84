"""ComfyUI entry point of the StreamingT2V node pack.

Only the V3 entry point (`comfy_entrypoint`): exporting NODE_CLASS_MAPPINGS too would make ComfyUI ignore
it. Nothing heavy is imported here; the nodes import the model code when they run.
"""
from comfy_api.latest import ComfyExtension

from .comfy_bridge.models import register_model_folders

register_model_folders()


class StreamingT2VExtension(ComfyExtension):
    async def get_node_list(self):
        from .nodes import all_nodes

        return all_nodes()


async def comfy_entrypoint() -> StreamingT2VExtension:
    return StreamingT2VExtension()
