import os

import torch

from trainer.cpu_tuning import configure_cpu


def test_each_process_gets_its_share_of_the_cores():
    before = torch.get_num_threads()
    try:
        cores = len(os.sched_getaffinity(0))
        assert configure_cpu(processes_on_node=1) == cores == torch.get_num_threads()
        assert configure_cpu(processes_on_node=2 * cores) == 1  # never zero
        assert configure_cpu(processes_on_node=1, threads=3) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
