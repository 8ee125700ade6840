from genpi.cli import main
import sys
sys.exit(main())
