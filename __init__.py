"""ComfyUI entry point of the StreamingT2V node pack.

Only the V3 entry point (`comfy_entrypoint`): exporting NODE_CLASS_MAPPINGS too would make ComfyUI ignore
it. Nothing heavy is imported here; the nodes import the model code when they run.
"""
import os

import folder_paths
from comfy_api.latest import ComfyExtension

# Model folder keys of the pack; `extra_model_paths.yaml` may already have added paths for them.
MODEL_FOLDERS = ("streamingt2v", "streamingt2v_refiner")


def _register_model_folders() -> None:
    for key in MODEL_FOLDERS:
        path = os.path.join(folder_paths.models_dir, key)
        folder_paths.add_model_folder_path(key, path)  # appends; never replaces yaml-configured paths
        # A new key starts with an empty extension set (= every file); offer weights, not sidecar .json.
        folder_paths.folder_names_and_paths[key][1].update(folder_paths.supported_pt_extensions)
        if os.path.isdir(folder_paths.models_dir):
            os.makedirs(path, exist_ok=True)


_register_model_folders()


class StreamingT2VExtension(ComfyExtension):
    async def get_node_list(self):
        from .nodes import all_nodes

        return all_nodes()


async def comfy_entrypoint() -> StreamingT2VExtension:
    return StreamingT2VExtension()
