"""python -m r1vflow.cli"""

from r1vflow.cli import main

main()
