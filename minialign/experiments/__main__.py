from .fdpg_study import main

raise SystemExit(main())
